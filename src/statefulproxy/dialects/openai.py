"""The OpenAI chat completions dialect: a path ending in ``/chat/completions``.

The canonical form is this dialect's own message shape, so parsing only validates and
rendering only lays messages out. The proxy's hot path splices stored replay bytes into
the body without going through ``render`` (``sessions.splice``); ``render`` serves
the general case. Streams are SSE ``data:`` chunks ending in ``[DONE]``
(``openai_recorder``), replies ``chat.completion`` bodies (``openai_stream``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

import orjson

from ..errors import ClientError, error_body
from .base import SYSTEM_ROLES, AssistantReply, Canonical, DialectName, ReplyDecoder, bad_request
from .openai_recorder import ChatStreamRecorder
from .openai_stream import reply_from_completion

__all__ = ["OpenAIDialect", "completion_body", "completion_stream", "validate_messages"]

_KEPT_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


def validate_messages(value: object) -> list[dict[str, Any]]:
    """The request's ``messages``, checked to be a list of objects with a string role."""
    if not isinstance(value, list):
        raise bad_request("'messages' must be an array of message objects.", "messages")
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{index}] must be an object with a string 'role'.", f"messages[{index}]")
        tool_calls = message.get("tool_calls")
        if tool_calls is not None and (
            not isinstance(tool_calls, list) or not all(isinstance(call, dict) for call in tool_calls)
        ):
            param = f"messages[{index}].tool_calls"
            raise bad_request(f"{param} must be an array of tool call objects.", param)
    return value


class OpenAIDialect:
    name: DialectName = "openai"
    messages_key = "messages"

    def parse(self, body: dict[str, Any]) -> list[Canonical]:
        return [Canonical(message) for message in validate_messages(body.get("messages"))]

    def render(self, body: dict[str, Any], system: Sequence[Canonical], history: Sequence[Canonical]) -> dict[str, Any]:
        own: list[Any] = body.get("messages") or []
        lead = 0
        while lead < len(own) and isinstance(own[lead], dict) and own[lead].get("role") in SYSTEM_ROLES:
            lead += 1
        laid_out = [_plain(item.message) for item in (*system, *history)]
        return {**body, "messages": [*laid_out, *own[lead:]]}

    def is_stream(self, body: dict[str, Any], path: str, query: str) -> bool:
        return body.get("stream") is True

    def stream_decoder(self, content_type: bytes) -> ReplyDecoder | None:
        return ChatStreamRecorder() if content_type.startswith(b"text/event-stream") else None

    def reply_from_body(self, body: Any) -> AssistantReply | None:
        return reply_from_completion(body)

    def recorded_body(self, message: Canonical, model: str | None, stream: bool, query: str) -> tuple[bytes, bytes]:
        if stream:
            return completion_stream(message.message, model), b"text/event-stream"
        return completion_body(message.message, model, None), b"application/json"

    def error_body(self, error: ClientError) -> bytes:
        return error_body(error.message, error.type, error.param, error.code)


def _plain(message: dict[str, Any]) -> dict[str, Any]:
    return {key: message[key] for key in _KEPT_KEYS if key in message}


def completion_body(message: dict[str, Any], model: object, session_id: str | None) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model if isinstance(model, str) else "",
        "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(message)}],
    }
    if session_id is not None:
        body["metadata"] = {"session_id": session_id}
    return orjson.dumps(body)


def completion_stream(message: dict[str, Any], model: object) -> bytes:
    """The recorded message as one chat.completion.chunk stream, ``[DONE]`` included."""
    base = {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model if isinstance(model, str) else "",
    }
    delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": index, **call} for index, call in enumerate(message["tool_calls"])]
    chunks = [
        {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish_reason(message)}]},
    ]
    return b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"


def _finish_reason(message: dict[str, Any]) -> str:
    return "tool_calls" if message.get("tool_calls") else "stop"
