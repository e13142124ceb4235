"""The official `openai` client reading a chat answer streamed and whole.

Usage: openai_stream.py BASE_URL. Prints one JSON object: the streamed
answer's text joined from its chunks (the client parses every event; an
invalid one raises), and the whole answer's text.
"""

import json
import sys

import openai

client = openai.OpenAI(base_url=f"{sys.argv[1]}/v1", api_key="none", max_retries=0)
messages = [{"role": "user", "content": "count"}]
stream = client.chat.completions.create(
    model="fixture", messages=messages, max_tokens=8, stream=True
)
streamed = "".join(
    chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
)
whole = client.chat.completions.create(model="fixture", messages=messages, max_tokens=8)
print(json.dumps({"stream": streamed, "whole": whole.choices[0].message.content}))
