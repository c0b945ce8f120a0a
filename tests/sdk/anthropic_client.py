"""The official Anthropic Python SDK against the tollgate gateway.

Run by tests/sdk.rs (`python anthropic_client.py BASE_URL KEY`) against a
gateway whose group `claude-sonnet` is an Anthropic-API deployment on the
bundled mock. Every check raises on failure; the last line is the plain
`N passed, 0 failed` summary.
"""

import sys

from checks import check, raises, summary

import anthropic

BASE, KEY = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)
TEXT = " ".join(f"tok{i}" for i in range(16))
MSG = [{"role": "user", "content": "Say hello."}]


# A message, whole.
m = client.messages.create(model="claude-sonnet", max_tokens=64, messages=MSG)
check("create: text", m.content[0].text == TEXT, m.content)
check("create: usage", m.usage.output_tokens == 16 and m.usage.input_tokens > 0, m.usage)
check("create: model names the group", m.model == "claude-sonnet", m.model)

# The stream helper, to the end.
with client.messages.stream(model="claude-sonnet", max_tokens=64, messages=MSG) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
check("stream: text", text == TEXT, text)
check("stream: stop reason", final.stop_reason == "end_turn", final.stop_reason)
check("stream: usage", final.usage.output_tokens == 16, final.usage)

# Thinking first: its signature kept, the first text delta after it arrives.
with client.messages.stream(
    model="claude-sonnet", max_tokens=64, messages=MSG, extra_body={"mock_fault": "thinking"}
) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
check("thinking: block first", final.content[0].type == "thinking", final.content)
check("thinking: signature", final.content[0].signature == "sig-mock-0001", final.content[0])
check("thinking: text whole", text == TEXT and final.content[1].text == TEXT, text)

# Tool use, streamed: the input arrives whole.
with client.messages.stream(
    model="claude-sonnet", max_tokens=64, messages=MSG, extra_body={"mock_fault": "tool_use:64KiB"}
) as s:
    final = s.get_final_message()
tool = final.content[0]
check("tool_use: block", tool.type == "tool_use" and tool.name == "mock_tool", tool)
check("tool_use: input whole", len(tool.input["data"]) == 64 * 1024 - 11, len(tool.input.get("data", "")))
check("tool_use: stop reason", final.stop_reason == "tool_use", final.stop_reason)

# Errors, each as the SDK's own exception type, its body parsed.
e = raises(
    "429 -> RateLimitError",
    anthropic.RateLimitError,
    lambda: client.messages.create(
        model="claude-limited", max_tokens=8, messages=MSG, extra_body={"mock_fault": "429:3"}
    ),
)
check("429: body", e.body["error"]["type"] == "rate_limit_error", e.body)
check("429: reason", e.body["error"]["metadata"]["reason"] == "upstream_rate_limited", e.body)
check("429: retry-after", e.response.headers.get("retry-after") == "3", e.response.headers)
bad = anthropic.Anthropic(base_url=BASE, api_key="tg-nobody-n0b0dyS3cr3tV4lu3Th4tMust", max_retries=0)
e = raises(
    "401 -> AuthenticationError",
    anthropic.AuthenticationError,
    lambda: bad.messages.create(model="claude-sonnet", max_tokens=8, messages=MSG),
)
check("401: reason", e.body["error"]["metadata"]["reason"] == "unknown_key", e.body)
e = raises(
    "404 -> NotFoundError",
    anthropic.NotFoundError,
    lambda: client.messages.create(model="claude-none", max_tokens=8, messages=MSG),
)
check("404: type", e.body["error"]["type"] == "not_found_error", e.body)
e = raises(
    "upstream 500 -> InternalServerError",
    anthropic.InternalServerError,
    lambda: client.messages.create(
        model="claude-broken", max_tokens=8, messages=MSG, extra_body={"mock_fault": "500"}
    ),
)
check("500: api_error", e.body["error"]["type"] == "api_error", e.body)


e = raises(
    "529 overloaded -> InternalServerError (503)",
    anthropic.InternalServerError,
    lambda: client.messages.create(
        model="claude-overloaded", max_tokens=8, messages=MSG, extra_body={"mock_fault": "529"}
    ),
)
check("529: overloaded_error", e.body["error"]["type"] == "overloaded_error", e.body)
check("529: 503", e.status_code == 503, e.status_code)


def cut():
    with client.messages.stream(
        model="claude-cut", max_tokens=8, messages=MSG, extra_body={"mock_fault": "cut:3"}
    ) as s:
        for _ in s.text_stream:
            pass


e = raises("a cut stream -> APIStatusError", anthropic.APIStatusError, cut)
check("cut: reason", e.body["error"]["metadata"]["reason"] == "upstream_stream_cut", e.body)

summary()
