"""What the built-in mock upstream answers (``--upstream mock://``): one reply, in each provider's wire format.

Pure: a chat request's path, query and body in, the status, content type and body frames out.
The reply repeats the last user message and says how many conversation messages the request
carried, system instructions not counted (an OpenAI/Ollama ``system``/``developer`` message,
Anthropic's ``system``, Gemini's ``systemInstruction``), so every dialect counts a session alike:
``You said: <text> (saw 3 messages)``. Streams are split at word boundaries. The frames are the
ones each provider sends (notes/providers.md): OpenAI SSE ending in ``data: [DONE]``, Anthropic
named SSE events up to ``message_stop``, Ollama NDJSON up to ``"done": true``, Gemini chunks
ending with ``finishReason``, as SSE with ``?alt=sse`` and else as one streamed JSON array.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qs

import orjson

MockDialect = Literal["openai", "anthropic", "anthropic_count", "ollama", "gemini", "gemini_stream"]

MODEL = "mock"  # the model named in replies to requests that name none
_SYSTEM_ROLES = frozenset({"system", "developer"})
_WORDS = re.compile(r"\s*\S+\s*")
_SUFFIXES: tuple[tuple[str, MockDialect], ...] = (
    ("/chat/completions", "openai"),
    ("/v1/messages", "anthropic"),
    ("/v1/messages/count_tokens", "anthropic_count"),
    ("/api/chat", "ollama"),
    (":generateContent", "gemini"),
    (":streamGenerateContent", "gemini_stream"),
)
SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"


@dataclass(frozen=True, slots=True)
class MockReply:
    status: int
    content_type: str
    frames: tuple[bytes, ...]  # the body: sent one frame a write when ``streamed``
    streamed: bool = False


def dialect_of(path: str) -> MockDialect | None:
    """The chat endpoint ``path`` ends with, None for any other path."""
    return next((dialect for suffix, dialect in _SUFFIXES if path.endswith(suffix)), None)


def answer(dialect: MockDialect, path: str, query_string: str, raw: bytes) -> MockReply:
    """The reply to one chat request of ``dialect``."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return error_reply(dialect, 400, "The request body must be a JSON object.")
    listed = body.get("contents" if dialect.startswith("gemini") else "messages")
    if not isinstance(listed, list) or not all(isinstance(message, dict) for message in listed):
        field = "contents" if dialect.startswith("gemini") else "messages"
        return error_reply(dialect, 400, f"'{field}' must be a list of objects.")
    messages: list[dict[str, Any]] = listed
    if dialect.startswith("gemini"):
        conversation = [(str(item.get("role") or "user"), _gemini_text(item)) for item in messages]
        model = path.rpartition("/models/")[2].partition(":")[0] or MODEL
    else:
        conversation = [(str(item.get("role")), _text(item.get("content"))) for item in messages]
        conversation = [(role, text) for role, text in conversation if role not in _SYSTEM_ROLES]
        model = body["model"] if isinstance(body.get("model"), str) and body["model"] else MODEL
    said = next((text for role, text in reversed(conversation) if role == "user"), "")
    count = len(conversation)
    text = f"You said: {said or '(no text)'} (saw {count} message{'' if count == 1 else 's'})"
    usage = Usage(sum(len(text.split()) for _, text in conversation) + count, len(text.split()))
    if dialect == "anthropic_count":
        return MockReply(200, JSON, (orjson.dumps({"input_tokens": usage.prompt}),))
    if dialect == "openai":
        return _openai(body, model, text, usage)
    if dialect == "anthropic":
        return _anthropic(body, model, text, usage)
    if dialect == "ollama":
        return _ollama(body, model, text, usage)
    alt_sse = parse_qs(query_string).get("alt") == ["sse"]
    return _gemini(dialect == "gemini_stream", alt_sse, model, text, usage)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt: int
    completion: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def error_reply(dialect: MockDialect | None, status: int, message: str) -> MockReply:
    """An error in the dialect's shape (OpenAI's for no dialect)."""
    body: dict[str, Any]
    if dialect in ("anthropic", "anthropic_count"):
        body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    elif dialect == "ollama":
        body = {"error": message}
    elif dialect in ("gemini", "gemini_stream"):
        body = {"error": {"code": status, "message": message, "status": "INVALID_ARGUMENT"}}
    else:
        # OpenAI answers an unknown path or object with 404 invalid_request_error too
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return MockReply(status, JSON, (orjson.dumps(body),))


def models_reply() -> MockReply:
    """``GET .../models``, as OpenAI lists them."""
    model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "statefulproxy"}
    return MockReply(200, JSON, (orjson.dumps({"object": "list", "data": [model]}),))


def _text(content: object) -> str:
    """The text of an OpenAI/Anthropic/Ollama message content: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _gemini_text(content: Mapping[str, Any]) -> str:
    parts = content.get("parts")
    return _text(parts) if isinstance(parts, list) else ""


def _pieces(text: str) -> list[str]:
    return _WORDS.findall(text) or [text]


def _sse(payload: Any, event: str | None = None) -> bytes:
    named = b"" if event is None else b"event: " + event.encode() + b"\n"
    return named + b"data: " + orjson.dumps(payload) + b"\n\n"


def _openai(body: Mapping[str, Any], model: str, text: str, usage: Usage) -> MockReply:
    head: dict[str, Any] = {"id": "chatcmpl-" + uuid.uuid4().hex[:24], "created": int(time.time()), "model": model}
    counts = {"prompt_tokens": usage.prompt, "completion_tokens": usage.completion, "total_tokens": usage.total}
    if body.get("stream") is not True:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        completion = {**head, "object": "chat.completion", "choices": [choice], "usage": counts}
        return MockReply(200, JSON, (orjson.dumps(completion),))
    options = body.get("stream_options")
    with_usage = isinstance(options, dict) and options.get("include_usage") is True
    chunk_head = {**head, "object": "chat.completion.chunk"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**chunk_head, "choices": [choice], **({"usage": None} if with_usage else {})})

    frames = [chunk({"role": "assistant", "content": "", "refusal": None})]
    frames += [chunk({"content": piece}) for piece in _pieces(text)]
    frames.append(chunk({}, "stop"))
    if with_usage:
        frames.append(_sse({**chunk_head, "choices": [], "usage": counts}))
    frames.append(b"data: [DONE]\n\n")
    return MockReply(200, SSE, tuple(frames), streamed=True)


def _anthropic(body: Mapping[str, Any], model: str, text: str, usage: Usage) -> MockReply:
    message: dict[str, Any] = {
        "id": "msg_mock" + uuid.uuid4().hex[:20],
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": usage.prompt, "output_tokens": usage.completion},
    }
    if body.get("stream") is not True:
        return MockReply(200, JSON, (orjson.dumps(message),))
    start = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": usage.prompt, "output_tokens": 1}}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
    ]
    events += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        for piece in _pieces(text)
    ]
    events += [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": usage.completion},
        },
        {"type": "message_stop"},
    ]
    return MockReply(200, SSE, tuple(_sse(event, event["type"]) for event in events), streamed=True)


def _ollama(body: Mapping[str, Any], model: str, text: str, usage: Usage) -> MockReply:
    created_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def line(content: str, done: bool = False) -> dict[str, Any]:
        return {
            "model": model,
            "created_at": created_at,
            "message": {"role": "assistant", "content": content},
            "done": done,
        }

    final = {
        "done_reason": "stop",
        "total_duration": 1_000_000,
        "load_duration": 100_000,
        "prompt_eval_count": usage.prompt,
        "prompt_eval_duration": 200_000,
        "eval_count": usage.completion,
        "eval_duration": 700_000,
    }
    if body.get("stream") is False:
        return MockReply(200, JSON, (orjson.dumps(line(text, True) | final),))
    frames = [orjson.dumps(line(piece)) + b"\n" for piece in _pieces(text)]
    frames.append(orjson.dumps(line("", True) | final) + b"\n")
    return MockReply(200, "application/x-ndjson", tuple(frames), streamed=True)


def _gemini(stream: bool, alt_sse: bool, model: str, text: str, usage: Usage) -> MockReply:
    response_id = uuid.uuid4().hex[:22]
    total = {
        "promptTokenCount": usage.prompt,
        "candidatesTokenCount": usage.completion,
        "totalTokenCount": usage.total,
    }

    def response(part: str, finish: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": part}], "role": "model"}}
        if finish:
            candidate["finishReason"] = "STOP"
        candidate["index"] = 0
        counts = total if finish else {"promptTokenCount": usage.prompt, "totalTokenCount": usage.prompt}
        return {"candidates": [candidate], "usageMetadata": counts, "modelVersion": model, "responseId": response_id}

    if not stream:
        return MockReply(200, JSON, (orjson.dumps(response(text, True)),))
    pieces = _pieces(text)
    chunks = [response(piece, index == len(pieces) - 1) for index, piece in enumerate(pieces)]
    if alt_sse:
        frames = tuple(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n" for chunk in chunks)
        return MockReply(200, "text/event-stream", frames, streamed=True)
    array = [(b"[" if index == 0 else b",\r\n") + orjson.dumps(chunk) for index, chunk in enumerate(chunks)]
    return MockReply(200, "application/json; charset=UTF-8", (*array, b"]"), streamed=True)
