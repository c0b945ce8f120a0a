"""Both official Python SDKs against a Bedrock deployment of the gateway.

Run by tests/sdk.rs (`python bedrock_client.py BASE_URL KEY`) against a
gateway whose groups `bedrock-claude` and `bedrock-tools` are Bedrock
(Converse) deployments on the bundled mock, signed with temporary
credentials from its container credentials endpoint (`bedrock-tools`'
deployment asks the mock for a tool call of 4 KiB of input). Each client
family, whole and streamed, and a tool call: what the gateway translates
from Converse must parse in each SDK. Every check raises on failure; the
last line is the plain `N passed, 0 failed` summary.
"""

import json
import sys

from checks import check, summary

import anthropic
import openai

BASE, KEY = sys.argv[1], sys.argv[2]
TEXT = " ".join(f"tok{i}" for i in range(16))
MSG = [{"role": "user", "content": "Say hello."}]
ARGS = 4 * 1024 - 11  # the length of the mock tool input's `data`
oa = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0)
an = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)
OA_TOOLS = [{"type": "function", "function": {"name": "mock_tool", "parameters": {"type": "object"}}}]
AN_TOOLS = [{"name": "mock_tool", "input_schema": {"type": "object"}}]

# OpenAI Chat, whole.
c = oa.chat.completions.create(model="bedrock-claude", messages=MSG)
check("openai: text", c.choices[0].message.content == TEXT, c)
check("openai: finish", c.choices[0].finish_reason == "stop", c)
check("openai: usage", c.usage.completion_tokens == 16 and c.usage.prompt_tokens > 0, c.usage)
check("openai: model names the group", c.model == "bedrock-claude", c.model)

# OpenAI Chat, streamed, with the usage chunk asked for.
chunks = list(
    oa.chat.completions.create(
        model="bedrock-claude", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
)
text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
check("openai stream: text", text == TEXT, text)
check("openai stream: finish", finish == ["stop"], finish)
check("openai stream: usage chunk", chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16, chunks[-1])

# OpenAI Chat, a tool call: whole, and streamed with its arguments intact.
c = oa.chat.completions.create(model="bedrock-tools", messages=MSG, tools=OA_TOOLS)
call = c.choices[0].message.tool_calls[0]
check("openai tool: name", call.function.name == "mock_tool", call)
check("openai tool: arguments", len(json.loads(call.function.arguments)["data"]) == ARGS, len(call.function.arguments))
check("openai tool: finish", c.choices[0].finish_reason == "tool_calls", c.choices[0].finish_reason)
name, args, finish = None, "", None
for ch in oa.chat.completions.create(model="bedrock-tools", messages=MSG, tools=OA_TOOLS, stream=True):
    if not ch.choices:
        continue
    for tc in ch.choices[0].delta.tool_calls or []:
        name = tc.function.name or name
        args += tc.function.arguments or ""
    finish = ch.choices[0].finish_reason or finish
check("openai tool stream: name", name == "mock_tool", name)
check("openai tool stream: arguments whole", len(json.loads(args)["data"]) == ARGS, len(args))
check("openai tool stream: finish", finish == "tool_calls", finish)

# Anthropic Messages, whole.
m = an.messages.create(model="bedrock-claude", max_tokens=64, messages=MSG)
check("anthropic: text", m.content[0].text == TEXT, m.content)
check("anthropic: stop reason", m.stop_reason == "end_turn", m.stop_reason)
check("anthropic: usage", m.usage.output_tokens == 16 and m.usage.input_tokens > 0, m.usage)

# Anthropic Messages, through the stream helper to the end.
with an.messages.stream(model="bedrock-claude", max_tokens=64, messages=MSG) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
check("anthropic stream: text", text == TEXT, text)
check("anthropic stream: stop reason", final.stop_reason == "end_turn", final.stop_reason)
check("anthropic stream: usage", final.usage.output_tokens == 16, final.usage)

# Anthropic Messages, a tool call: whole, and streamed.
m = an.messages.create(model="bedrock-tools", max_tokens=64, messages=MSG, tools=AN_TOOLS)
tool = m.content[0]
check("anthropic tool: block", tool.type == "tool_use" and tool.name == "mock_tool", tool)
check("anthropic tool: input", len(tool.input["data"]) == ARGS, len(tool.input.get("data", "")))
check("anthropic tool: stop reason", m.stop_reason == "tool_use", m.stop_reason)
with an.messages.stream(model="bedrock-tools", max_tokens=64, messages=MSG, tools=AN_TOOLS) as s:
    final = s.get_final_message()
tool = final.content[0]
check("anthropic tool stream: block", tool.type == "tool_use" and tool.name == "mock_tool", tool)
check("anthropic tool stream: input whole", len(tool.input["data"]) == ARGS, len(tool.input.get("data", "")))
check("anthropic tool stream: stop reason", final.stop_reason == "tool_use", final.stop_reason)

summary()
