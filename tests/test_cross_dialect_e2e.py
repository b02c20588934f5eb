"""One session continued across every dialect, each through its real SDK: openai -> anthropic -> ollama -> gemini
-> openai (-> anthropic -> gemini), with text and a tool call + result in the middle (CONTRACT.md section 3:
sessions are dialect-neutral). At each step the upstream must get valid, alternating history in that dialect's
shape, holding every earlier turn exactly once."""

from __future__ import annotations

import base64
import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import ollama
import orjson
import pytest
from google import genai
from google.genai import types

from harness import upstream as reply
from harness.stack import Stack, running_stack, store_url_for
from harness.upstream import RecordedRequest

KEY = "cross-dialect-key"  # one credential, sent the way each SDK sends it
MODEL = "any-model"
ANTHROPIC_SIGNATURE = "ErUBCkYIBxgCIkB+thinking/signature+with/slashes=="
GEMINI_SIGNATURE = base64.b64encode(b"\xfa\xfb\xfc gemini thought \xfd\xfe\xff").decode()
SYSTEM = "You are the cross-dialect assistant."
TOOL_RESULT = "t3 sunny and 21 C"
ANTHROPIC_THINKING = "r2 the user wants Lyon weather"
# each turn's user text and the upstream's answer; every one must reach every later upstream exactly once
USER_TEXTS = ["u1 openai", "u2 anthropic", "u3 ollama", "u4 gemini", "u5 openai", "u6 anthropic", "u7 gemini"]
ANSWERS = ["a1 openai", "a2 anthropic checking", "a3 ollama", "a4 gemini", "a5 openai", "a6 anthropic"]


@pytest.fixture(scope="module", params=["memory", "redis"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    with running_stack(store_url_for(request.param, redis_url)) as running:
        yield running


def assert_openai_well_formed(messages: list[dict[str, Any]]) -> None:
    """Tool messages right after the assistant message whose tool_calls they answer, ids matching."""
    open_ids: list[str] = []
    for index, message in enumerate(messages):
        if message["role"] == "tool":
            assert messages[index - 1]["role"] in ("assistant", "tool")
            open_ids.remove(message["tool_call_id"])
            continue
        assert not open_ids, (open_ids, message)
        if message["role"] == "assistant":
            open_ids = [call["id"] for call in message.get("tool_calls") or []]
            assert all(isinstance(call["function"]["arguments"], str) for call in message.get("tool_calls") or [])
    assert messages[-1]["role"] == "user"


def assert_anthropic_well_formed(messages: list[dict[str, Any]]) -> None:
    assert messages[0]["role"] == "user"
    assert messages[-1]["role"] == "user"
    assert all(a["role"] != b["role"] for a, b in itertools.pairwise(messages))
    pending: list[str] = []
    for message in messages:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        assert blocks
        if message["role"] == "assistant":
            pending = [block["id"] for block in blocks if block["type"] == "tool_use"]
            continue
        results = [block["tool_use_id"] for block in blocks if block["type"] == "tool_result"]
        assert results == pending, (pending, blocks)
        assert [block["type"] for block in blocks[: len(results)]] == ["tool_result"] * len(results)
        pending = []


def assert_ollama_well_formed(messages: list[dict[str, Any]]) -> None:
    roles = [message["role"] for message in messages]
    assert roles[0] == "system"
    assert "system" not in roles[1:]
    open_calls: list[str] = []
    for index, message in enumerate(messages):
        if message["role"] == "tool":
            assert roles[index - 1] in ("assistant", "tool")
            open_calls.remove(message["tool_name"])
            continue
        open_calls = []
        if message["role"] == "assistant":
            calls = message.get("tool_calls") or []
            assert all(isinstance(call["function"]["arguments"], dict) for call in calls)
            open_calls = [call["function"]["name"] for call in calls]
    assert roles[-1] == "user"


def assert_gemini_well_formed(contents: list[dict[str, Any]]) -> None:
    roles = [content.get("role", "user") for content in contents]
    assert roles[0] == "user"
    assert roles[-1] == "user"
    assert all(a != b for a, b in itertools.pairwise(roles)), roles
    called: list[str] = []
    for content, role in zip(contents, roles, strict=True):
        parts = content["parts"]
        assert parts
        if role == "model":
            called = [part["functionCall"]["name"] for part in parts if "functionCall" in part]
            continue
        answered = [part["functionResponse"]["name"] for part in parts if "functionResponse" in part]
        assert answered == called, (called, parts)
        assert all("functionResponse" in part for part in parts[: len(answered)])
        called = []


def assert_every_earlier_turn_once(
    request: RecordedRequest, turn: int, replayed_in_parts: tuple[str, ...] = ()
) -> None:
    """The upstream of turn ``turn`` (1-based) got every user text up to it and every earlier answer, once each
    (but ``replayed_in_parts``: answers replayed natively as the parts they streamed in, checked by the caller)."""
    body = request.body
    for text in USER_TEXTS[:turn] + ANSWERS[: turn - 1]:
        if text in replayed_in_parts:
            continue
        assert body.count(text.encode()) == 1, (text, request.json)
    for later in USER_TEXTS[turn:] + ANSWERS[turn - 1 :]:
        assert later.encode() not in body
    assert body.count(SYSTEM.encode()) == 1
    assert body.count(TOOL_RESULT.encode()) == (1 if turn >= 3 else 0)


def last(stack: Stack, before: int) -> RecordedRequest:
    received = stack.upstream.received[before:]
    assert len(received) == 1, [request.path for request in received]
    return received[0]


def test_one_session_continues_across_every_dialect(stack: Stack) -> None:
    session_id = f"cross-{uuid.uuid4().hex[:12]}"
    headers = {"session-id": session_id}
    upstream = stack.upstream
    weather_tool: Any = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}

    # 1. openai: the system prompt and the first turn
    upstream.push(reply.text(ANSWERS[0]))
    before = len(upstream.received)
    with stack.client(api_key=KEY, default_headers=headers) as openai_client:
        system_and_first: Any = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER_TEXTS[0]}]
        assert openai_client.chat.completions.create(model=MODEL, messages=system_and_first).choices[0].message.content
    sent = last(stack, before)
    assert sent.json["messages"] == system_and_first
    assert_every_earlier_turn_once(sent, 1)

    # 2. anthropic, streamed: answers with signed thinking, text and a tool call
    called = reply.tool_calls(
        [("toolu_c1", "get_weather", '{"city": "Lyon"}')],
        ANSWERS[1],
        reasoning=ANTHROPIC_THINKING,
        signature=ANTHROPIC_SIGNATURE,
    )
    upstream.push(called, path="/v1/messages")
    before = len(upstream.received)
    claude = anthropic.Anthropic(base_url=stack.url, api_key=KEY, max_retries=0, default_headers=headers)
    with (
        claude,
        claude.messages.stream(
            model=MODEL, max_tokens=256, tools=[weather_tool], messages=[{"role": "user", "content": USER_TEXTS[1]}]
        ) as events,
    ):
        assert events.get_final_message().stop_reason == "tool_use"
    sent = last(stack, before)
    assert sent.json["system"] == SYSTEM
    assert sent.json["messages"] == [
        {"role": "user", "content": USER_TEXTS[0]},
        {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[0]}]},
        {"role": "user", "content": USER_TEXTS[1]},
    ]
    assert_anthropic_well_formed(sent.json["messages"])
    assert_every_earlier_turn_once(sent, 2)

    # 3. ollama, streamed NDJSON: the tool result (by tool name) and the next user text
    upstream.push(reply.text(ANSWERS[2]), path="/api/chat")
    before = len(upstream.received)
    with ollama.Client(host=stack.url, headers={"authorization": f"Bearer {KEY}", **headers}) as llama:
        turn: Any = [
            {"role": "tool", "content": TOOL_RESULT, "tool_name": "get_weather"},
            {"role": "user", "content": USER_TEXTS[2]},
        ]
        parts = list(llama.chat(model=MODEL, messages=turn, stream=True))
        assert "".join(part.message.content or "" for part in parts) == ANSWERS[2]
    sent = last(stack, before)
    assert sent.json["messages"][:5] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": USER_TEXTS[0]},
        {"role": "assistant", "content": ANSWERS[0]},
        {"role": "user", "content": USER_TEXTS[1]},
        {
            "role": "assistant",
            "content": ANSWERS[1],
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Lyon"}}}],
        },
    ]
    assert sent.json["messages"][5:] == turn
    assert_ollama_well_formed(sent.json["messages"])
    assert_every_earlier_turn_once(sent, 3)
    assert ANTHROPIC_SIGNATURE.encode() not in sent.body
    assert ANTHROPIC_THINKING.encode() not in sent.body

    # 4. gemini, streamed over SSE: answers text carrying a thought signature
    upstream.push(
        reply.text(ANSWERS[3], thought_signature=GEMINI_SIGNATURE, chunk_size=4), path=":streamGenerateContent"
    )
    before = len(upstream.received)
    options = types.HttpOptions(base_url=stack.url, headers=headers)
    with genai.Client(api_key=KEY, http_options=options) as gemini:
        chunks = list(gemini.models.generate_content_stream(model=MODEL, contents=USER_TEXTS[3]))
        assert "".join(chunk.text or "" for chunk in chunks) == ANSWERS[3]
    sent = last(stack, before)
    assert sent.json["systemInstruction"] == {"parts": [{"text": SYSTEM}]}
    contents = sent.json["contents"]
    assert contents[3] == {
        "role": "model",
        "parts": [{"text": ANSWERS[1]}, {"functionCall": {"name": "get_weather", "args": {"city": "Lyon"}}}],
    }
    assert contents[4] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"result": TOOL_RESULT}}},
            {"text": USER_TEXTS[2]},
        ],
    }
    assert contents[5:] == [
        {"role": "model", "parts": [{"text": ANSWERS[2]}]},
        {"parts": [{"text": USER_TEXTS[3]}], "role": "user"},
    ]
    assert_gemini_well_formed(contents)
    assert_every_earlier_turn_once(sent, 4)
    assert ANTHROPIC_SIGNATURE.encode() not in sent.body
    assert ANTHROPIC_THINKING.encode() not in sent.body

    # 5. back to openai, streamed
    upstream.push(reply.text(ANSWERS[4]))
    before = len(upstream.received)
    with stack.client(api_key=KEY, default_headers=headers) as openai_client:
        stream = openai_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": USER_TEXTS[4]}], stream=True
        )
        with stream:
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text == ANSWERS[4]
    sent = last(stack, before)
    messages = sent.json["messages"]
    assert messages[4:6] == [
        {
            "role": "assistant",
            "content": ANSWERS[1],
            "tool_calls": [
                {
                    "id": "toolu_c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_c1", "content": TOOL_RESULT},
    ]
    assert [message["role"] for message in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert_openai_well_formed(messages)
    assert_every_earlier_turn_once(sent, 5)
    for foreign in (ANTHROPIC_SIGNATURE, ANTHROPIC_THINKING, GEMINI_SIGNATURE):
        assert foreign.encode() not in sent.body  # what a dialect cannot express is dropped, never invented

    # 6. anthropic again: its own signed thinking block comes back byte-equal, after three other dialects
    upstream.push(reply.text(ANSWERS[5]), path="/v1/messages")
    before = len(upstream.received)
    with anthropic.Anthropic(base_url=stack.url, api_key=KEY, max_retries=0, default_headers=headers) as claude:
        claude.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": USER_TEXTS[5]}])
    sent = last(stack, before)
    produced = [
        {"type": "thinking", "thinking": ANTHROPIC_THINKING, "signature": ANTHROPIC_SIGNATURE},
        {"type": "text", "text": ANSWERS[1]},
        {"type": "tool_use", "id": "toolu_c1", "name": "get_weather", "input": {"city": "Lyon"}},
    ]
    assert sent.json["messages"][3] == {"role": "assistant", "content": produced}
    assert orjson.dumps(produced) in sent.body
    assert sent.json["messages"][4]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_c1", "content": TOOL_RESULT},
        {"type": "text", "text": USER_TEXTS[2]},
    ]
    assert_anthropic_well_formed(sent.json["messages"])
    assert_every_earlier_turn_once(sent, 6)
    assert GEMINI_SIGNATURE.encode() not in sent.body

    # 7. gemini again, not streamed: its thought signature comes back exactly
    upstream.push(reply.text("a7 gemini"), path=":generateContent")
    before = len(upstream.received)
    with genai.Client(api_key=KEY, http_options=options) as gemini:
        assert gemini.models.generate_content(model=MODEL, contents=USER_TEXTS[6]).text == "a7 gemini"
    sent = last(stack, before)
    # streamed in 4-character chunks, the signature on the last one: that part stays apart, as it came
    signed = {"role": "model", "parts": [{"text": "a4 gemin"}, {"text": "i", "thoughtSignature": GEMINI_SIGNATURE}]}
    assert sent.json["contents"][7] == signed
    assert orjson.dumps(signed["parts"]) in sent.body
    assert_gemini_well_formed(sent.json["contents"])
    assert_every_earlier_turn_once(sent, 7, replayed_in_parts=(ANSWERS[3],))
    assert ANTHROPIC_SIGNATURE.encode() not in sent.body

    # the management API shows it all in the canonical (OpenAI) form, each message once
    with httpx2.Client(base_url=stack.url, headers={"authorization": f"Bearer {KEY}"}, timeout=10) as management:
        data = management.get(f"/v1/sessions/{session_id}/messages", params={"limit": 100}).json()["data"]
    roles = [message["role"] for message in data]
    assert roles == ["system", "user", "assistant", "user", "assistant", "tool"] + ["user", "assistant"] * 5
    assert [message["content"] for message in data if message["role"] == "user"] == USER_TEXTS
    assert [message["content"] for message in data if message["role"] == "assistant"] == [*ANSWERS, "a7 gemini"]
    assert data[4]["reasoning"] == ANTHROPIC_THINKING
    assert ANTHROPIC_SIGNATURE not in json.dumps(data)
    assert GEMINI_SIGNATURE not in json.dumps(data)
    assert upstream.pending == 0


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def test_an_image_sent_to_ollama_reaches_the_other_dialects(stack: Stack) -> None:
    session_id = f"image-{uuid.uuid4().hex[:12]}"
    headers = {"session-id": session_id}
    upstream = stack.upstream
    upstream.push(reply.text("a red pixel"), path="/api/chat")
    upstream.push(reply.text("still red"), path="/v1/messages")
    upstream.push(reply.text("yes"), path=":generateContent")
    with ollama.Client(host=stack.url, headers={"authorization": f"Bearer {KEY}", **headers}) as llama:
        llama.chat(model=MODEL, messages=[{"role": "user", "content": "what is this?", "images": [PNG]}])
    before = len(upstream.received)
    with anthropic.Anthropic(base_url=stack.url, api_key=KEY, max_retries=0, default_headers=headers) as claude:
        claude.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "sure?"}])
    sent = last(stack, before)
    assert sent.json["messages"][0] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        ],
    }
    assert_anthropic_well_formed(sent.json["messages"])
    before = len(upstream.received)
    options = types.HttpOptions(base_url=stack.url, headers=headers)
    with genai.Client(api_key=KEY, http_options=options) as gemini:
        gemini.models.generate_content(model=MODEL, contents="really?")
    sent = last(stack, before)
    assert sent.json["contents"][0] == {
        "role": "user",
        "parts": [{"text": "what is this?"}, {"inlineData": {"mimeType": "image/png", "data": PNG}}],
    }
    assert_gemini_well_formed(sent.json["contents"])
    with httpx2.Client(base_url=stack.url, headers={"authorization": f"Bearer {KEY}"}, timeout=10) as management:
        data = management.get(f"/v1/sessions/{session_id}/messages").json()["data"]
    assert data[0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    assert upstream.pending == 0
