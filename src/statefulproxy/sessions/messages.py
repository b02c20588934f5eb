"""Chat messages as statefulproxy stores and replays them.

Strict providers (Groq, Mistral, Cerebras, older OpenAI models) reject unknown keys on
messages, so what is replayed upstream is an allow-list per role (notes/providers.md,
"Replaying stored history"). The same minimal form is the canonical form the prefix
check compares, so a client that echoes back the assistant message it was given
(``refusal: null``, ``annotations``, ``tool_calls[].index``, ...) still matches.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import orjson

from ..dialects.base import SYSTEM_ROLES

ReasoningField = Literal["none", "reasoning_content", "reasoning"]

_PLAIN_KEYS = ("role", "content", "name")


def minimal(message: Mapping[str, Any], reasoning_field: ReasoningField = "none") -> dict[str, Any]:
    """The replayable form of a message: only the fields its role allows."""
    role = message["role"]
    if role == "assistant":
        return _minimal_assistant(message, reasoning_field)
    if role == "tool":
        return {"role": "tool", "tool_call_id": message.get("tool_call_id"), "content": message.get("content")}
    out: dict[str, Any] = {"role": role, "content": message.get("content")}
    if message.get("name") is not None:
        out["name"] = message["name"]
    return out


def _minimal_assistant(message: Mapping[str, Any], reasoning_field: ReasoningField) -> dict[str, Any]:
    tool_calls = message.get("tool_calls") or None
    content = message.get("content")
    if content == "" or content is None:
        # "" and null mean the same; null is what OpenAI sends beside tool calls, and an
        # assistant message without tool calls needs a content to be accepted back.
        content = None if tool_calls else ""
    out: dict[str, Any] = {"role": "assistant", "content": content}
    if message.get("name") is not None:
        out["name"] = message["name"]
    if tool_calls:
        out["tool_calls"] = [_minimal_tool_call(call) for call in tool_calls]
    if reasoning_field != "none":
        reasoning = message.get(reasoning_field)
        if reasoning:
            out[reasoning_field] = reasoning
    return out


def _minimal_tool_call(call: Any) -> Any:
    if not isinstance(call, Mapping):
        return call
    function = call.get("function")
    if isinstance(function, Mapping):
        function = {"name": function.get("name"), "arguments": function.get("arguments")}
    return {"id": call.get("id"), "type": call.get("type") or "function", "function": function}


def canonical(message: Mapping[str, Any], reasoning_field: ReasoningField = "none") -> bytes:
    """The bytes a message is stored and compared as."""
    return orjson.dumps(minimal(message, reasoning_field))


def leading_system_count(messages: Sequence[Mapping[str, Any]]) -> int:
    count = 0
    for message in messages:
        if message["role"] not in SYSTEM_ROLES:
            break
        count += 1
    return count


TITLE_LENGTH = 60


def title_from(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The start of the first user message, cut at a word boundary (at most 60 characters)."""
    for message in messages:
        if message["role"] != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(
                part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        if not isinstance(content, str):
            return None
        text = " ".join(content.split())
        if len(text) <= TITLE_LENGTH:
            return text or None
        cut = text[: TITLE_LENGTH + 1].rsplit(" ", 1)[0] if " " in text[: TITLE_LENGTH + 1] else text[:TITLE_LENGTH]
        return cut[:TITLE_LENGTH].rstrip()
    return None


class MessageIds:
    """Message ids: a random per-process prefix and a counter (unique across replicas, no syscall)."""

    def __init__(self) -> None:
        self._prefix = b"msg_" + secrets.token_hex(8).encode()
        self._counter = itertools.count()

    def new(self) -> bytes:
        return self._prefix + b"%08x" % next(self._counter)
