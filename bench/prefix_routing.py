"""Load against prefix routing, one workload, through the gateway's OpenAI API.

8 "applications", each with its own ~400-token system prompt, hold multi-turn
conversations (every turn resends the history) with Poisson arrivals; each
request streams with usage. Prints one JSON line per base URL: cached-token
ratio (cached / prompt tokens, from usage), time to first token p50/p99 and
completed requests per second.

  python3 bench/prefix_routing.py --salt run1 URL_LOAD URL_PREFIX
"""

import argparse
import asyncio
import json
import random
import statistics
import time

from openai import AsyncOpenAI

QUESTIONS = [
    "What should I check first?",
    "Give me one example.",
    "And what if that fails?",
    "Summarise in one line.",
]


def system_prompt(app, text, salt):
    return f"[{salt}] Application {app}. You assist the team of application {app}.\n{text}"


async def conversation(client, model, system, turns, out):
    history = [{"role": "system", "content": system}]
    for turn in range(turns):
        history.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
        started = time.monotonic()
        first = None
        text = []
        usage = None
        stream = await client.chat.completions.create(
            model=model,
            messages=history,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if first is None:
                    first = time.monotonic() - started
                text.append(chunk.choices[0].delta.content)
            if chunk.usage:
                usage = chunk.usage
        if first is None:
            first = time.monotonic() - started
        cached = 0
        if usage and usage.prompt_tokens_details:
            cached = usage.prompt_tokens_details.cached_tokens or 0
        out.append((first, usage.prompt_tokens if usage else 0, cached))
        history.append({"role": "assistant", "content": "".join(text)})


async def run(url, model, text, salt, conversations, turns, rate, seed):
    client = AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    rng = random.Random(seed)
    out = []
    tasks = []
    started = time.monotonic()
    for i in range(conversations):
        app = rng.randrange(8)
        tasks.append(asyncio.create_task(
            conversation(client, model, system_prompt(app, text, salt), turns, out)))
        await asyncio.sleep(rng.expovariate(rate))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    ttft = sorted(t for t, _, _ in out)
    prompt = sum(p for _, p, _ in out)
    cached = sum(c for _, _, c in out)
    return {
        "url": url,
        "requests": len(out),
        "cached_token_ratio": cached / prompt if prompt else 0.0,
        "ttft_p50_ms": statistics.median(ttft) * 1e3,
        "ttft_p99_ms": ttft[min(len(ttft) - 1, int(len(ttft) * 0.99))] * 1e3,
        "requests_per_s": len(out) / elapsed,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("urls", nargs="+")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--text", default="bench/prompt.txt")
    p.add_argument("--salt", default="run")
    p.add_argument("--conversations", type=int, default=24)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--rate", type=float, default=0.5, help="conversations started per second")
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    text = open(a.text).read() * 3
    for i, url in enumerate(a.urls):
        # Each URL its own salt: no run reuses another's cached prompts.
        row = asyncio.run(run(url, a.model, text, f"{a.salt}-{i}", a.conversations,
                              a.turns, a.rate, a.seed))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
