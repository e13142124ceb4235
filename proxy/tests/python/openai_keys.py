"""The official `openai` client against a route with `auth = "keys"`.

Usage: openai_keys.py BASE_URL KEY. Prints one JSON object of what it saw: the
error classes and codes the client raises for a bad key and for a request over
the key's output-token limit, and the rate-limit headers of a good answer.
"""

import json
import sys

import openai

base, key = sys.argv[1], sys.argv[2]
seen = {}


def chat(client, max_tokens):
    return client.chat.completions.with_raw_response.create(
        model="fixture",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=max_tokens,
    )


bad = openai.OpenAI(base_url=f"{base}/v1", api_key="gk-wrong", max_retries=0)
try:
    chat(bad, 5)
except openai.AuthenticationError as e:
    seen["bad_key"] = {"status": e.status_code, "code": e.code}

good = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
raw = chat(good, 5)
answer = raw.parse()
seen["ok"] = {
    "completion_tokens": answer.usage.completion_tokens,
    "limit_tokens": raw.headers.get("x-ratelimit-limit-tokens"),
    "remaining_tokens": raw.headers.get("x-ratelimit-remaining-tokens"),
    "reset_tokens": raw.headers.get("x-ratelimit-reset-tokens"),
}
try:
    chat(good, 1000)
except openai.RateLimitError as e:
    seen["over"] = {
        "status": e.status_code,
        "code": e.code,
        "retry_after": e.response.headers.get("retry-after"),
    }
print(json.dumps(seen))
