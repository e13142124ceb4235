"""PyTorch transformers baseline for the GPU benchmark (issue 6).

Loads a Hugging Face llama directory written by `gantry model export-hf` (the same
weights Gantry serves) and measures, per batch size, the time to first token of a
prompt and the aggregate decode rate of `model.generate` (greedy, fixed length),
writing one JSON line per batch size.

    python3 bench/torch_baseline.py DIR --device cuda --dtype bfloat16 \
        --batches 1,8,32,64 --prompt 128 --generate 128 --out results.jsonl

Prompts are random token ids from a fixed seed (the synthetic model has no real
vocabulary to speak of). Time to first token = wall time of `generate` with one new
token (prefill + first sample); decode rate = batch * (generate - 1) new tokens over
the rest of a full `generate`. Each measurement is the median of `--repeat` runs
after one warm-up.
"""
import argparse
import json
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, repeat):
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--batches", default="1,8,32,64")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--generate", type=int, default=128)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="-")
    args = p.parse_args(argv)
    if args.generate < 2:
        p.error("--generate must be at least 2 (one token for the first-token time, more for decode)")

    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype).to(args.device)
    model.eval()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(args.seed)
    out = sys.stdout if args.out == "-" else open(args.out, "a")
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    for batch in [int(b) for b in args.batches.split(",")]:
        ids = torch.randint(3, vocab, (batch, args.prompt), generator=gen).to(args.device)
        mask = torch.ones_like(ids)

        def run(new_tokens):
            with torch.inference_mode():
                return model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=0,
                )

        run(1)  # warm-up of both shapes, and the shape check
        produced = run(args.generate)
        assert produced.shape == (batch, args.prompt + args.generate), produced.shape
        first = timed(lambda: run(1), args.device, args.repeat)
        whole = timed(lambda: run(args.generate), args.device, args.repeat)
        # Too noisy to tell apart (tiny CPU runs): no decode rate rather than a wrong one.
        decode = batch * (args.generate - 1) / (whole - first) if whole > first else None
        row = {
            "engine": "pytorch-transformers",
            "torch": torch.__version__,
            "device": device_name,
            "dtype": args.dtype,
            "batch": batch,
            "prompt_tokens": args.prompt,
            "generated_tokens": args.generate,
            "ttft_ms": round(first * 1000, 3),
            "total_s": round(whole, 4),
            "decode_tokens_per_s": None if decode is None else round(decode, 1),
        }
        out.write(json.dumps(row) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
