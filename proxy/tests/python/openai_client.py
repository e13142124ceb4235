"""The official `openai` Python client against `gantry serve` (real models on the CPU).

Usage: openai_client.py BASE_URL   (e.g. http://127.0.0.1:8080)
Prints one JSON object with what it saw; the Rust test asserts on it. Also checks
that /openapi.json is a valid OpenAPI 3.1 document (openapi-spec-validator) and
that every numeric limit in its request schemas is the one the gateway enforces:
a value just past each limit is a 400 naming that parameter, the limit itself is not.
"""
import base64
import json
import sys
import urllib.error
import urllib.request

import openai
from openapi_spec_validator import validate

base = sys.argv[1]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
seen = {}

chat = client.chat.completions.create(
    model="smollm2-135m",
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=8,
    temperature=0,
)
seen["chat"] = {
    "content": chat.choices[0].message.content,
    "finish_reason": chat.choices[0].finish_reason,
    "completion_tokens": chat.usage.completion_tokens,
}

pieces = []
usage = None
finish = None
stream = client.chat.completions.create(
    model="smollm2-135m",
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=8,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage.completion_tokens
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
seen["stream"] = {"content": "".join(pieces), "chunks": len(pieces), "completion_tokens": usage, "finish_reason": finish}

completion = client.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=3, temperature=0)
seen["completion"] = {"text": completion.choices[0].text, "completion_tokens": completion.usage.completion_tokens}

emb = client.embeddings.create(model="all-minilm-l6-v2", input=["a cat", "a dog"])
seen["embeddings"] = {"count": len(emb.data), "dims": len(emb.data[0].embedding),
                      "norm": sum(x * x for x in emb.data[0].embedding) ** 0.5}

seen["models"] = sorted(m.id for m in client.models.list())

try:
    client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "x"}], temperature=5)
    seen["bad_request"] = None
except openai.BadRequestError as e:
    seen["bad_request"] = {"status": e.status_code, "param": e.param, "message": e.message}

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    seen["not_found"] = None
except openai.NotFoundError as e:
    seen["not_found"] = {"status": e.status_code, "code": e.code}

# The OpenAPI document validates, and its limits are the enforced ones.
doc = json.load(urllib.request.urlopen(base + "/openapi.json"))
validate(doc)
schemas = doc["components"]["schemas"]


def properties(name):
    """Properties of a schema, following allOf and $ref (flattened fields)."""
    s = schemas[name]
    out = dict(s.get("properties", {}))
    for part in s.get("allOf", []):
        if "$ref" in part:
            out.update(properties(part["$ref"].split("/")[-1]))
        else:
            out.update(part.get("properties", {}))
    return out


def send(body):
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, None
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)["error"].get("param")


def numeric(schema):
    """The schema's own numeric keywords (Option<T> is a 3.1 type list or oneOf with null)."""
    return {k: schema[k] for k in ("minimum", "maximum", "exclusiveMinimum") if k in schema}


checked = []
for param, schema in sorted(properties("ChatCompletionRequest").items()):
    limits = numeric(schema)
    if not limits:
        continue
    integer = "integer" in json.dumps(schema.get("type", ""))
    step = 1 if integer else 0.01
    base_body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    for kind, edge in limits.items():
        outside = edge + step if kind == "maximum" else (edge if kind == "exclusiveMinimum" else edge - step)
        status, got = send({**base_body, param: outside})
        checked.append([param, kind, edge, outside, status, got])
        if kind != "exclusiveMinimum":
            status_in, got_in = send({**base_body, param: edge})
            checked.append([param, kind, edge, edge, status_in, got_in])
seen["limits"] = checked
print(json.dumps(seen))
