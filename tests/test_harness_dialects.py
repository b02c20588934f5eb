"""Tests of the scripted upstream's Anthropic, Ollama and Gemini wire formats, driven by the providers' real SDKs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from harness.dialect_replies import ANTHROPIC_PATH, GEMINI_PATH, GEMINI_STREAM_PATH, OLLAMA_PATH
from harness.servers import serve
from harness.upstream import (
    Completion,
    ScriptedUpstream,
    cut,
    error,
    hold,
    inband_error,
    no_done,
    refusal,
    text,
    tool_calls,
)

USER = [{"role": "user", "content": "hi"}]
CONTENTS = [{"role": "user", "parts": [{"text": "hi"}]}]
TOOL_REPLY = tool_calls(
    [("toolu_1", "get_weather", '{"city":"Paris","days":2}')],
    "Let me look.",
    reasoning="The user wants weather.",
    signature="sig-abc",
    thought_signature="c2lnLTE=",  # base64 of b"sig-1"
)
DEADLINE = 5.0


@pytest.fixture
def upstream() -> ScriptedUpstream:
    return ScriptedUpstream()


@pytest.fixture
def url(upstream: ScriptedUpstream) -> Iterator[str]:
    with serve(upstream) as base_url:
        yield base_url


@pytest.fixture
def claude(url: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=url, api_key="k", max_retries=0) as client:
        yield client


@pytest.fixture
def gemini(url: str) -> genai.Client:
    return genai.Client(api_key="k", http_options=types.HttpOptions(base_url=url))


@pytest.fixture
def http(url: str) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=url) as client:
        yield client


def sse_events(body: bytes) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) of each SSE event; accepts \\n\\n and \\r\\n\\r\\n separators."""
    events = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block:
            continue
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n"))
        name = fields[b"event"].decode() if b"event" in fields else None
        events.append((name, json.loads(fields[b"data"])))
    return events


def ndjson(body: bytes) -> list[dict[str, Any]]:
    assert body.endswith(b"\n")
    return [json.loads(line) for line in body.splitlines()]


# Anthropic Messages


def create_message(claude: anthropic.Anthropic) -> anthropic.types.Message:
    return claude.messages.create(model="claude-x", max_tokens=100, messages=USER)


def test_anthropic_create_carries_thinking_signature_text_and_tool_use(
    claude: anthropic.Anthropic, upstream: ScriptedUpstream
) -> None:
    upstream.push(TOOL_REPLY, path=ANTHROPIC_PATH)

    message = create_message(claude)

    assert message.id == "msg_1"
    assert message.model == "claude-x"
    thinking, said, tool_use = message.content
    assert thinking.type == "thinking"
    assert (thinking.thinking, thinking.signature) == ("The user wants weather.", "sig-abc")
    assert said.type == "text"
    assert said.text == "Let me look."
    assert tool_use.type == "tool_use"
    assert (tool_use.id, tool_use.name, tool_use.input) == ("toolu_1", "get_weather", {"city": "Paris", "days": 2})
    assert message.stop_reason == "tool_use"
    generated = len("The user wants weather.") + len("Let me look.") + len('{"city":"Paris","days":2}')
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, generated)
    assert upstream.received[0].path == "/v1/messages"


def test_anthropic_stream_sends_the_providers_events(claude: anthropic.Anthropic, upstream: ScriptedUpstream) -> None:
    upstream.push(TOOL_REPLY, path=ANTHROPIC_PATH)

    with claude.messages.stream(model="claude-x", max_tokens=100, messages=USER) as stream:
        names = [event.type for event in stream]
        final = stream.get_final_message()

    assert [block.model_dump(exclude_none=True) for block in final.content] == [
        {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig-abc"},
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "days": 2}},
    ]
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == create_message_usage(TOOL_REPLY)
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 3


def create_message_usage(reply: Completion) -> int:
    return sum(len(part or "") for part in (reply.content, reply.reasoning)) + sum(len(a) for *_, a in reply.tool_calls)


def test_anthropic_raw_stream_names_events_and_pieces_the_json(http: httpx2.Client, upstream: ScriptedUpstream) -> None:
    upstream.push(text("for the OpenAI path"))
    upstream.push(tool_calls([("toolu_9", "f", '{"a":12345}')], reasoning="hm", signature="s"), path=ANTHROPIC_PATH)

    response = http.post("/v1/messages", json={"model": "c", "messages": USER, "stream": True})

    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.content)
    assert all(name == data["type"] for name, data in events)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",  # thinking_delta
        "content_block_delta",  # signature_delta
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert deltas[:2] == [{"type": "thinking_delta", "thinking": "hm"}, {"type": "signature_delta", "signature": "s"}]
    assert [delta["partial_json"] for delta in deltas[2:]] == ["", '{"a"', ":123", "45}"]
    assert events[6][1]["content_block"] == {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {}}
    assert events[0][1]["message"]["usage"]["input_tokens"] == 10
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"] == {"output_tokens": 2 + 11}
    assert upstream.pending == 1  # the OpenAI-path reply was not taken by the Anthropic request


def test_anthropic_default_reply_refusal_and_other_message_paths(
    claude: anthropic.Anthropic, http: httpx2.Client, upstream: ScriptedUpstream
) -> None:
    upstream.push(refusal("I can't help with that."), path=ANTHROPIC_PATH)

    refused = create_message(claude)
    counted = http.post("/v1/messages/count_tokens", json={"messages": USER})
    batch = http.post("/v1/messages/batches", json={"requests": []})
    default = create_message(claude)

    assert [block.model_dump(exclude_none=True) for block in refused.content] == [
        {"type": "text", "text": "I can't help with that."}
    ]
    assert counted.json()["path"] == "/v1/messages/count_tokens"  # echoed, not answered as a chat
    assert batch.json()["path"] == "/v1/messages/batches"
    assert default.content[0].type == "text"
    assert default.content[0].text == "reply 2"
    assert default.stop_reason == "end_turn"


def test_anthropic_errors_have_anthropic_shape(claude: anthropic.Anthropic, upstream: ScriptedUpstream) -> None:
    upstream.push(error(429), inband_error(after_chunks=3), path=ANTHROPIC_PATH)

    with pytest.raises(anthropic.RateLimitError) as limited:
        create_message(claude)
    with (
        pytest.raises(anthropic.APIStatusError, match="overloaded_error") as overloaded,
        claude.messages.stream(model="claude-x", max_tokens=100, messages=USER) as stream,
    ):
        list(stream)

    assert limited.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "scripted error 429"},
    }
    assert overloaded.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def test_anthropic_cut_and_no_done(
    claude: anthropic.Anthropic, http: httpx2.Client, upstream: ScriptedUpstream
) -> None:
    upstream.push(cut(after_chunks=4), no_done(text("ab", chunk_size=1)), path=ANTHROPIC_PATH)

    with (
        pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError)),
        claude.messages.stream(model="claude-x", max_tokens=100, messages=USER) as stream,
    ):
        list(stream)
    unfinished = sse_events(http.post("/v1/messages", json={"messages": USER, "stream": True}).content)

    assert [name for name, _ in unfinished][-3:] == ["content_block_delta", "content_block_stop", "message_delta"]


# Ollama /api/chat


def test_ollama_streams_ndjson_lines_with_thinking_and_object_arguments(
    http: httpx2.Client, upstream: ScriptedUpstream
) -> None:
    upstream.push(
        tool_calls([("call_1", "f", '{"x":[1,2]}')], "Hi there", reasoning="hmm", chunk_size=4), path=OLLAMA_PATH
    )

    response = http.post("/api/chat", json={"model": "llama3", "messages": USER})

    assert response.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(response.content)
    assert {line["model"] for line in lines} == {"llama3"}
    assert [line["done"] for line in lines] == [False, False, False, False, True]
    messages = [line["message"] for line in lines]
    assert messages[0] == {"role": "assistant", "content": "", "thinking": "hmm"}
    assert "".join(message["content"] for message in messages) == "Hi there"
    assert messages[3]["tool_calls"] == [
        {"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {"x": [1, 2]}}}
    ]
    last = lines[-1]
    assert (last["done_reason"], last["prompt_eval_count"], last["eval_count"]) == ("stop", 10, 3 + 8 + 11)
    assert last["message"] == {"role": "assistant", "content": ""}


def test_ollama_stream_false_is_one_object_and_default_reply_counts(
    http: httpx2.Client, upstream: ScriptedUpstream
) -> None:
    upstream.push(text("long answ", finish_reason="length"), path=OLLAMA_PATH)
    chat = {"model": "llama3", "messages": [*USER, {"role": "assistant", "content": "x"}, *USER], "stream": False}

    scripted = http.post("/api/chat", json=chat).json()
    default = http.post("/api/chat", json=chat).json()

    assert scripted["message"] == {"role": "assistant", "content": "long answ"}
    assert (scripted["done"], scripted["done_reason"], scripted["prompt_eval_count"]) == (True, "length", 30)
    assert default["message"]["content"] == "reply 2"
    assert default["eval_count"] == len("reply 2")


def test_ollama_failures(http: httpx2.Client, upstream: ScriptedUpstream) -> None:
    upstream.push(
        inband_error(after_chunks=1, reply=text("abc", chunk_size=1)),
        no_done(text("ab", chunk_size=1)),
        error(500),
        cut(after_chunks=1),
        path=OLLAMA_PATH,
    )

    inband = ndjson(http.post("/api/chat", json={"messages": USER}).content)
    unfinished = ndjson(http.post("/api/chat", json={"messages": USER}).content)
    failed = http.post("/api/chat", json={"messages": USER})
    with (
        pytest.raises(httpx2.RemoteProtocolError),
        http.stream("POST", "/api/chat", json={"messages": USER}) as cut_off,
    ):
        cut_off.read()

    assert inband == [inband[0], {"error": "an error was encountered while running the model"}]
    assert inband[0]["message"]["content"] == "a"
    assert [line["message"]["content"] for line in unfinished] == ["a", "b"]
    assert not any(line["done"] for line in unfinished)
    assert (failed.status_code, failed.json()) == (500, {"error": "scripted error 500"})


def test_ollama_hold_until_released(http: httpx2.Client, upstream: ScriptedUpstream) -> None:
    release = threading.Event()
    upstream.push(hold(release, after_chunks=1, reply=text("held", chunk_size=2)), path=OLLAMA_PATH)

    with http.stream("POST", "/api/chat", json={"messages": USER}) as response:
        lines = response.iter_lines()
        first = json.loads(next(lines))
        release.set()
        rest = [json.loads(line) for line in lines if line]

    assert first["message"]["content"] == "he"
    assert [line["message"]["content"] for line in rest] == ["ld", ""]
    assert rest[-1]["done"] is True


# Gemini generateContent


def test_gemini_generate_content_with_thought_function_call_and_signature(
    gemini: genai.Client, upstream: ScriptedUpstream
) -> None:
    upstream.push(TOOL_REPLY, path=GEMINI_PATH)

    response = gemini.models.generate_content(model="gemini-x", contents="hi")

    assert response.candidates is not None
    candidate = response.candidates[0]
    assert candidate.finish_reason == types.FinishReason.STOP
    assert candidate.content is not None
    thought, said, call = candidate.content.parts or []
    assert (thought.text, thought.thought) == ("The user wants weather.", True)
    assert (said.text, said.thought, said.thought_signature) == ("Let me look.", None, None)
    assert call.function_call is not None
    assert (call.function_call.name, call.function_call.args) == ("get_weather", {"city": "Paris", "days": 2})
    assert call.thought_signature == b"sig-1"
    assert response.model_version == "gemini-x"
    usage = response.usage_metadata
    assert usage is not None
    thoughts = len("The user wants weather.")
    assert (usage.prompt_token_count, usage.thoughts_token_count) == (10, thoughts)
    assert usage.total_token_count == 10 + create_message_usage(TOOL_REPLY)
    assert upstream.received[0].path.endswith("/models/gemini-x:generateContent")


def test_gemini_stream_chunks_end_with_finish_reason(gemini: genai.Client, upstream: ScriptedUpstream) -> None:
    upstream.push(TOOL_REPLY, text("signed text", thought_signature="c2lnLTI="), path=GEMINI_STREAM_PATH)

    calls = list(gemini.models.generate_content_stream(model="gemini-x", contents="hi"))
    texts = list(gemini.models.generate_content_stream(model="gemini-x", contents="hi"))

    assert b"alt=sse" in upstream.received[0].query_string
    parts = [part for chunk in calls for part in chunk.candidates[0].content.parts]
    assert "".join(part.text for part in parts if part.thought) == "The user wants weather."
    assert "".join(part.text for part in parts if part.text and not part.thought) == "Let me look."
    assert parts[-1].function_call is not None
    assert parts[-1].function_call.args == {"city": "Paris", "days": 2}
    assert parts[-1].thought_signature == b"sig-1"
    assert [chunk.candidates[0].finish_reason for chunk in calls][-2:] == [None, types.FinishReason.STOP]
    assert calls[-1].usage_metadata.candidates_token_count is not None
    assert "".join(chunk.text or "" for chunk in texts) == "signed text"
    text_parts = [chunk.candidates[0].content.parts[0] for chunk in texts]
    assert [part.thought_signature for part in text_parts] == [None, None, b"sig-2"]


def test_gemini_errors_have_google_shape(gemini: genai.Client, upstream: ScriptedUpstream) -> None:
    upstream.push(error(404), path=GEMINI_PATH)
    upstream.push(inband_error(after_chunks=1), path=GEMINI_STREAM_PATH)

    with pytest.raises(genai_errors.ClientError) as missing:
        gemini.models.generate_content(model="gemini-x", contents="hi")
    received: list[str] = []
    with pytest.raises(genai_errors.ServerError) as inband:
        received.extend(chunk.text or "" for chunk in gemini.models.generate_content_stream(model="m", contents="x"))

    assert (missing.value.code, missing.value.status) == (404, "NOT_FOUND")
    assert (inband.value.code, inband.value.status) == (500, "INTERNAL")
    assert received == ["repl"]


def test_gemini_json_array_stream_without_alt_sse(http: httpx2.Client, upstream: ScriptedUpstream) -> None:
    upstream.push(no_done(text("abc", chunk_size=2)), cut(after_chunks=1), path=GEMINI_STREAM_PATH)
    path = "/v1beta/models/gem:streamGenerateContent"
    two_turns = {"contents": [*CONTENTS, {"role": "model", "parts": [{"text": "x"}]}, *CONTENTS]}

    unfinished = http.post(path, json=two_turns)
    with pytest.raises(httpx2.RemoteProtocolError), http.stream("POST", path, json=two_turns) as cut_off:
        cut_off.read()
    complete = http.post(path, json=two_turns)

    assert unfinished.headers["content-type"].startswith("application/json")
    chunks = json.loads(unfinished.content)
    assert [chunk["candidates"][0]["content"]["parts"] for chunk in chunks] == [[{"text": "ab"}], [{"text": "c"}]]
    assert not any("finishReason" in chunk["candidates"][0] for chunk in chunks)
    finished = json.loads(complete.content)
    assert unfinished.content.startswith(b"[{")
    assert unfinished.content.count(b"},\r\n{") == 1
    assert unfinished.content.endswith(b"}]")
    assert "".join(chunk["candidates"][0]["content"]["parts"][0]["text"] for chunk in finished) == "reply 3"
    assert finished[-1]["candidates"][0]["finishReason"] == "STOP"
    assert finished[-1]["usageMetadata"] == {"promptTokenCount": 30, "candidatesTokenCount": 7, "totalTokenCount": 37}
    assert finished[-1]["modelVersion"] == "gem"


# All dialects


def test_default_replies_count_chat_requests_of_every_dialect(
    http: httpx2.Client, claude: anthropic.Anthropic, gemini: genai.Client
) -> None:
    openai_reply = http.post("/v1/chat/completions", json={"messages": USER}).json()
    http.get("/v1/models")
    claude_reply = create_message(claude)
    ollama_reply = http.post("/api/chat", json={"messages": USER, "stream": False}).json()
    gemini_reply = gemini.models.generate_content(model="gemini-x", contents="hi")

    assert openai_reply["choices"][0]["message"]["content"] == "reply 1"
    assert claude_reply.content[0].text == "reply 2"
    assert ollama_reply["message"]["content"] == "reply 3"
    assert gemini_reply.text == "reply 4"
