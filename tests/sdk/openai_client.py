"""The official OpenAI Python SDK against the tollgate gateway.

Run by tests/sdk.rs (`python openai_client.py BASE_URL KEY`) against a
gateway whose group `gpt-4o-mini` is an OpenAI-API deployment on the bundled
mock. Every check raises on failure; the last line is the plain
`N passed, 0 failed` summary.
"""

import json
import sys

from checks import check, raises, summary

import openai

BASE, KEY = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0)
TEXT = " ".join(f"tok{i}" for i in range(16))
MSG = [{"role": "user", "content": "Say hello."}]


c = client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
check("chat: text", c.choices[0].message.content == TEXT, c)
check("chat: usage", c.usage.completion_tokens == 16, c.usage)

chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True))
text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
check("chat stream: text", text == TEXT, text)
check("chat stream: no usage chunk the client did not ask for", all(ch.usage is None for ch in chunks))

# The Responses API: whole, and through the stream helper to the end.
r = client.responses.create(model="gpt-4o-mini", input="Say hello.")
check("responses: output_text", r.output_text == TEXT, r.output_text)
with client.responses.stream(model="gpt-4o-mini", input="Say hello.") as s:
    deltas = "".join(e.delta for e in s if e.type == "response.output_text.delta")
    final = s.get_final_response()
check("responses stream: deltas", deltas == TEXT, deltas)
check("responses stream: final", final.output_text == TEXT and final.status == "completed", final)

e = client.embeddings.create(model="gpt-4o-mini", input="hello")
check("embeddings", len(e.data[0].embedding) == 8, e)

# An Anthropic-API deployment behind the OpenAI SDK: translated both ways.
c = client.chat.completions.create(model="claude-sonnet", messages=MSG)
check("translated chat: text", c.choices[0].message.content == TEXT, c)
check("translated chat: finish", c.choices[0].finish_reason == "stop", c)
stream = client.chat.completions.create(
    model="claude-tools",
    messages=MSG,
    stream=True,
    tools=[{"type": "function", "function": {"name": "mock_tool", "parameters": {"type": "object"}}}],
)
name, args, finish = None, "", None
for ch in stream:
    if not ch.choices:
        continue
    for call in ch.choices[0].delta.tool_calls or []:
        name = call.function.name or name
        args += call.function.arguments or ""
    finish = ch.choices[0].finish_reason or finish
check("translated stream: tool name", name == "mock_tool", name)
check("translated stream: arguments whole", len(json.loads(args)["data"]) == 4 * 1024 - 11, len(args))
check("translated stream: finish", finish == "tool_calls", finish)

# Errors, each as the SDK's own exception type with the contract's body.
e = raises(
    "429 -> RateLimitError",
    openai.RateLimitError,
    lambda: client.chat.completions.create(
        model="gpt-limited", messages=MSG, extra_body={"mock_fault": "429:4"}
    ),
)
check("429: reason", e.body["metadata"]["reason"] == "upstream_rate_limited", e.body)
check("429: retry-after", e.response.headers.get("retry-after") == "4", e.response.headers)
bad = openai.OpenAI(base_url=BASE + "/v1", api_key="tg-nobody-n0b0dyS3cr3tV4lu3Th4tMust", max_retries=0)
e = raises(
    "401 -> AuthenticationError",
    openai.AuthenticationError,
    lambda: bad.chat.completions.create(model="gpt-4o-mini", messages=MSG),
)
check("401: reason", e.body["metadata"]["reason"] == "unknown_key", e.body)
e = raises(
    "404 -> NotFoundError",
    openai.NotFoundError,
    lambda: client.chat.completions.create(model="gpt-none", messages=MSG),
)
check("404: reason", e.body["metadata"]["reason"] == "model_not_found", e.body)
e = raises(
    "upstream 500 -> InternalServerError",
    openai.InternalServerError,
    lambda: client.chat.completions.create(
        model="gpt-broken", messages=MSG, extra_body={"mock_fault": "500"}
    ),
)
check("500: reason", e.body["metadata"]["reason"] == "upstream_error", e.body)

summary()
