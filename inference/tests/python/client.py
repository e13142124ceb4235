"""A gantry.inference.v1 client that owes nothing to Gantry's code: stubs are
generated here from the .proto with grpcio-tools, then used with grpcio.

  python3 client.py PROTO_ROOT ADDR   → prints one JSON object with what it saw
"""
import json, os, sys, tempfile

proto_root, addr = sys.argv[1], sys.argv[2]
out = tempfile.mkdtemp()
from grpc_tools import protoc
rc = protoc.main(["protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}",
                  "gantry/inference/v1/inference.proto"])
assert rc == 0, f"protoc failed: {rc}"
sys.path.insert(0, out)
import grpc
from gantry.inference.v1 import inference_pb2 as pb, inference_pb2_grpc as rpc

channel = grpc.insecure_channel(addr)
grpc.channel_ready_future(channel).result(timeout=10)
stub = rpc.InferenceStub(channel)
seen = {}
seen["models"] = sorted(m.name for m in stub.ListModels(pb.ListModelsRequest()).models)
text, ids, finished = "", [], None
for msg in stub.Generate(pb.GenerateRequest(model="smollm2-135m", prompt="The capital of France is",
                                            sampling=pb.SamplingParams(max_tokens=5))):
    if msg.HasField("delta"):
        text += msg.delta.text
        ids += list(msg.delta.token_ids)
    else:
        finished = msg.finished
seen["text"], seen["ids"] = text, ids
seen["finish_reason"] = pb.FinishReason.Name(finished.reason)
seen["completion_tokens"] = finished.usage.completion_tokens
emb = stub.Embed(pb.EmbedRequest(model="all-minilm-l6-v2", inputs=["hello world"]))
seen["embedding_len"] = len(emb.embeddings[0].values)
try:
    stub.Generate(pb.GenerateRequest(model="smollm2-135m", prompt="x",
                                     sampling=pb.SamplingParams(max_tokens=100000))).next()
except grpc.RpcError as e:
    seen["error_code"], seen["error_message"] = e.code().name, e.details()
print(json.dumps(seen))
