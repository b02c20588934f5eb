"""The mock upstream's replies (``--upstream mock://``), without a server: each dialect's frames and counts."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from statefulproxy.mock_replies import MockReply, answer, dialect_of, error_reply

TURNS = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "My name is Ada."},
    {"role": "assistant", "content": "Hi Ada"},
    {"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "my name?"}]},
]
SAID = "You said: What is my name? (saw 3 messages)"


def ask(path: str, body: Any, query: str = "") -> MockReply:
    dialect = dialect_of(path)
    assert dialect is not None
    return answer(dialect, path, query, orjson.dumps(body))


def sse_payloads(reply: MockReply) -> list[Any]:
    events = b"".join(reply.frames).split(b"\n\n")
    assert events[-1] == b""
    return [
        json.loads(line[len(b"data: ") :])
        for event in events[:-1]
        for line in event.split(b"\n")
        if line.startswith(b"data: {")
    ]


def test_dialects_are_found_by_the_path_ending() -> None:
    assert dialect_of("/v1/chat/completions") == "openai"
    assert dialect_of("/openai/deployments/d/chat/completions") == "openai"
    assert dialect_of("/v1/messages") == "anthropic"
    assert dialect_of("/v1/messages/count_tokens") == "anthropic_count"
    assert dialect_of("/api/chat") == "ollama"
    assert dialect_of("/v1beta/models/gemini-2.5-flash:generateContent") == "gemini"
    assert dialect_of("/v1beta/models/g:streamGenerateContent") == "gemini_stream"
    assert dialect_of("/v1/embeddings") is None


def test_openai_counts_the_conversation_without_the_system_message() -> None:
    reply = ask("/v1/chat/completions", {"model": "gpt-x", "messages": TURNS})
    assert (reply.status, reply.content_type, reply.streamed) == (200, "application/json", False)
    body = json.loads(b"".join(reply.frames))
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-x"
    assert body["choices"][0]["message"]["content"] == SAID
    assert body["choices"][0]["finish_reason"] == "stop"


def test_openai_stream_ends_with_done_and_reassembles_to_the_reply() -> None:
    body = {"messages": TURNS[:2], "stream": True, "stream_options": {"include_usage": True}}
    reply = ask("/v1/chat/completions", body)
    assert reply.streamed
    assert reply.frames[-1] == b"data: [DONE]\n\n"
    chunks = sse_payloads(reply)
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"])
    assert text == "You said: My name is Ada. (saw 1 message)"
    assert chunks[0]["model"] == "mock"  # a request that names no model
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    assert len(reply.frames) > 4  # word by word, not one piece


def test_anthropic_counts_without_its_system_and_streams_named_events() -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, TURNS[3]]
    plain = json.loads(b"".join(ask("/v1/messages", {"system": "s", "messages": messages}).frames))
    assert plain["content"] == [{"type": "text", "text": SAID}]
    assert plain["stop_reason"] == "end_turn"
    reply = ask("/v1/messages", {"system": "s", "messages": messages, "stream": True})
    names = [frame.split(b"\n")[0] for frame in reply.frames]
    assert names[0] == b"event: message_start"
    assert names[-1] == b"event: message_stop"
    deltas = [event["delta"]["text"] for event in sse_payloads(reply) if event["type"] == "content_block_delta"]
    assert "".join(deltas) == SAID


def test_anthropic_count_tokens() -> None:
    reply = ask("/v1/messages/count_tokens", {"messages": [{"role": "user", "content": "one two"}]})
    assert json.loads(b"".join(reply.frames))["input_tokens"] > 0


def test_ollama_streams_ndjson_unless_told_not_to() -> None:
    streamed = ask("/api/chat", {"model": "llama3.2", "messages": TURNS})
    assert streamed.content_type == "application/x-ndjson"
    lines = [json.loads(frame) for frame in streamed.frames]
    assert all(frame.endswith(b"\n") for frame in streamed.frames)
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert "".join(line["message"]["content"] for line in lines) == SAID
    whole = json.loads(b"".join(ask("/api/chat", {"messages": TURNS, "stream": False}).frames))
    assert whole["done"] is True
    assert whole["message"]["content"] == SAID


@pytest.mark.parametrize("query", ["", "alt=sse"])
def test_gemini_streams_an_array_or_sse(query: str) -> None:
    contents = [
        {"role": "user", "parts": [{"text": "My name is Ada."}]},
        {"role": "model", "parts": [{"text": "Hi"}]},
        {"role": "user", "parts": [{"text": "What is my name?"}]},
    ]
    body = {"systemInstruction": {"parts": [{"text": "s"}]}, "contents": contents}
    reply = ask("/v1beta/models/gemini-2.5-flash:streamGenerateContent", body, query)
    if query:
        chunks = [json.loads(frame.removeprefix(b"data: ")) for frame in reply.frames]
        assert all(frame.endswith(b"\r\n\r\n") for frame in reply.frames)
    else:
        chunks = json.loads(b"".join(reply.frames))
    texts = [chunk["candidates"][0]["content"]["parts"][0]["text"] for chunk in chunks]
    assert "".join(texts) == "You said: What is my name? (saw 3 messages)"
    assert [chunk["candidates"][0].get("finishReason") for chunk in chunks][-2:] == [None, "STOP"]
    assert chunks[0]["modelVersion"] == "gemini-2.5-flash"
    single = json.loads(b"".join(ask("/v1beta/models/g:generateContent", body).frames))
    assert single["candidates"][0]["content"]["parts"] == [{"text": "You said: What is my name? (saw 3 messages)"}]


def test_a_last_message_without_text_and_no_messages() -> None:
    tool_only = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    body = json.loads(b"".join(ask("/v1/chat/completions", {"messages": tool_only}).frames))
    assert body["choices"][0]["message"]["content"] == "You said: (no text) (saw 1 message)"
    empty = json.loads(b"".join(ask("/v1/chat/completions", {"messages": []}).frames))
    assert empty["choices"][0]["message"]["content"] == "You said: (no text) (saw 0 messages)"


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/v1/chat/completions", {"error": {"message": str, "type": str, "param": None, "code": None}}),
        ("/v1/messages", {"type": "error", "error": {"type": str, "message": str}}),
        ("/api/chat", {"error": str}),
        ("/v1beta/models/g:generateContent", {"error": {"code": 400, "message": str, "status": str}}),
    ],
)
@pytest.mark.parametrize("raw", [b"not json", b"[1]", b'{"messages": "x"}', b'{"contents": [1]}'])
def test_bad_requests_get_the_dialects_error(path: str, shape: dict[str, Any], raw: bytes) -> None:
    dialect = dialect_of(path)
    assert dialect is not None
    if raw == b'{"contents": [1]}' and not dialect.startswith("gemini"):
        raw = b'{"messages": [1]}'
    reply = answer(dialect, path, "", raw)
    assert reply.status == 400
    assert_shape(json.loads(b"".join(reply.frames)), shape)


def test_unknown_paths_are_an_openai_404() -> None:
    reply = error_reply(None, 404, "nope")
    body = json.loads(b"".join(reply.frames))
    assert (reply.status, body["error"]["type"]) == (404, "invalid_request_error")


def assert_shape(value: Any, shape: Any) -> None:
    if isinstance(shape, dict):
        assert isinstance(value, dict), value
        assert set(value) == set(shape), value
        for key, inner in shape.items():
            assert_shape(value[key], inner)
    elif isinstance(shape, type):
        assert isinstance(value, shape), value
    else:
        assert value == shape
