"""Reassemble an OpenAI chat completion, streamed or not, into the assistant turn to record (sans-I/O).

Streamed: ``ChatStreamAccumulator`` takes the ``data`` payloads of a ``chat.completion.chunk`` stream. Not streamed:
``reply_from_completion`` takes the parsed ``chat.completion`` body. Only choice 0 is
recorded. Anything malformed marks the stream failed instead of raising: the bytes still
reach the client, the turn is just not recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .base import AssistantReply

__all__ = ["AssistantReply", "ChatStreamAccumulator", "reply_from_completion"]


# A legacy `function_call` reply is kept as the one tool call it stands for, under this id.
LEGACY_CALL_ID = "call_function_call"


class _Malformed(Exception):
    """A payload that does not have the shape of a chat completion (chunk)."""


@dataclass(slots=True)
class _ToolCallParts:
    id: str = ""
    type: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ChatStreamAccumulator:
    """Feeds on SSE ``data`` payloads of an OpenAI ``chat.completion.chunk`` stream.

    ``[DONE]`` completes the stream; an in-band ``error`` payload, non-JSON data or a
    wrongly typed field fails it. Payloads after either are ignored.
    """

    def __init__(self) -> None:
        self._done = False
        self._failed = False
        self._content: list[str] | None = None  # None until a non-null fragment arrives
        self._refusal: list[str] = []
        self._reasoning: list[str] = []
        self._name: str | None = None
        self._tool_calls: dict[int, _ToolCallParts] = {}
        self._last_tool_index = 0
        self._finish_reason: str | None = None
        self._model: str | None = None
        self._response_id: str | None = None
        self._usage: dict[str, int] | None = None

    @property
    def done(self) -> bool:
        """True once ``[DONE]`` was seen, without a failure before it."""
        return self._done

    @property
    def failed(self) -> bool:
        """True once the stream reported an error or sent something malformed."""
        return self._failed

    def feed(self, data: str | bytes) -> None:
        """Take the ``data`` of one event (text, or its UTF-8 bytes). Never raises."""
        if self._done or self._failed:
            return
        done = data.startswith("[DONE]") if isinstance(data, str) else data.startswith(b"[DONE]")
        if done:  # the prefix test the OpenAI SDKs use
            self._done = True
            return
        if not data or data.isspace():  # a blank keep-alive event carries nothing to record
            return
        try:
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError:
                if not isinstance(data, bytes):
                    raise
                # read as the SSE decoder would: invalid UTF-8 replaced, not fatal
                payload = orjson.loads(data.decode("utf-8", "replace"))
            self._apply_chunk(payload)
        except (orjson.JSONDecodeError, _Malformed):
            self._failed = True

    def result(self) -> AssistantReply:
        """The reassembled reply. Only valid once ``done``."""
        if not self._done:
            raise RuntimeError("the stream has not completed")
        tool_calls = [
            {
                "id": parts.id,
                "type": parts.type or "function",
                "function": {"name": parts.name, "arguments": "".join(parts.arguments)},
            }
            for _, parts in sorted(self._tool_calls.items())
        ]
        return _reply(
            content=None if self._content is None else "".join(self._content),
            name=self._name,
            tool_calls=tool_calls,
            refusal="".join(self._refusal),
            reasoning="".join(self._reasoning),
            usage=self._usage,
            finish_reason=self._finish_reason,
            model=self._model,
            response_id=self._response_id,
        )

    def _apply_chunk(self, payload: Any) -> None:
        if not isinstance(payload, dict) or payload.get("error") is not None:
            raise _Malformed
        # Azure's first chunk has "id": "" and "model": "": keep the first non-empty value.
        response_id = _opt_str(payload, "id")
        if response_id and self._response_id is None:
            self._response_id = response_id
        model = _opt_str(payload, "model")
        if model and self._model is None:
            self._model = model
        if payload.get("usage") is not None:
            self._usage = _usage(payload["usage"])
        for choice in _objects(payload.get("choices")):
            if _int(choice.get("index", 0)) == 0:  # n > 1 interleaves choices: record only the first
                self._apply_choice(choice)

    def _apply_choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        # The commonest chunk by far: a text fragment, nothing else to look at.
        if type(delta) is dict and delta.keys() <= _TEXT_DELTA_KEYS and choice.get("finish_reason") is None:
            content = delta.get("content")
            if type(content) is str:
                if self._content is None:
                    self._content = []
                self._content.append(content)
                return
        finish_reason = _opt_str(choice, "finish_reason")
        if finish_reason is not None:
            self._finish_reason = finish_reason
        delta = choice.get("delta")
        if delta is None:
            return
        if not isinstance(delta, dict):
            raise _Malformed
        content = _opt_str(delta, "content")
        if content is not None:
            if self._content is None:
                self._content = []
            self._content.append(content)
        refusal = _opt_str(delta, "refusal")
        if refusal:
            self._refusal.append(refusal)
        reasoning = _reasoning(delta)
        if reasoning:
            self._reasoning.append(reasoning)
        name = _opt_str(delta, "name")
        if name and self._name is None:
            self._name = name
        for fragment in _objects(delta.get("tool_calls")):
            self._apply_tool_call(fragment)
        legacy = _opt_dict(delta, "function_call")
        if legacy:
            self._apply_tool_call({"index": 0, "id": LEGACY_CALL_ID, "type": "function", "function": legacy})

    def _apply_tool_call(self, fragment: dict[str, Any]) -> None:
        call_id = _opt_str(fragment, "id")
        call_type = _opt_str(fragment, "type")
        function = _opt_dict(fragment, "function")
        name = _opt_str(function, "name")
        arguments = _opt_str(function, "arguments")
        raw_index = fragment.get("index")
        if raw_index is not None:
            index = _int(raw_index)
        else:
            # Some OpenAI-compatible servers omit `index`: a new id starts a new call,
            # anything else continues the latest one.
            latest = self._tool_calls.get(self._last_tool_index)
            if latest is None or (call_id and call_id != latest.id):
                index = max(self._tool_calls, default=-1) + 1
            else:
                index = self._last_tool_index
        parts = self._tool_calls.get(index)
        if parts is None:
            parts = self._tool_calls[index] = _ToolCallParts()
        self._last_tool_index = index
        # The first fragment of an index carries id, type and name; later ones only argument pieces.
        if call_id and not parts.id:
            parts.id = call_id
        if call_type and not parts.type:
            parts.type = call_type
        if name and not parts.name:
            parts.name = name
        if arguments:
            parts.arguments.append(arguments)


def reply_from_completion(body: Any) -> AssistantReply | None:
    """The reply in a parsed, non-streamed ``chat.completion`` body; None if ``body`` is not one."""
    if not isinstance(body, dict) or body.get("error") is not None:
        return None
    choices = body.get("choices")
    if not isinstance(choices, list):
        return None
    try:
        choice = next((c for c in choices if isinstance(c, dict) and _int(c.get("index", 0)) == 0), None)
        if choice is None:
            return None
        message = choice.get("message")
        if not isinstance(message, dict):
            return None
        raw_tool_calls = message.get("tool_calls")
        if raw_tool_calls is not None and not isinstance(raw_tool_calls, list):
            return None
        legacy = _opt_dict(message, "function_call")
        if legacy and not raw_tool_calls:
            raw_tool_calls = [{"id": LEGACY_CALL_ID, "type": "function", "function": legacy}]
        tool_calls: list[dict[str, Any]] = []
        for call in raw_tool_calls or ():
            if not isinstance(call, dict):
                return None
            function = _opt_dict(call, "function")
            tool_calls.append(
                {
                    "id": _opt_str(call, "id") or "",
                    "type": _opt_str(call, "type") or "function",
                    "function": {
                        "name": _opt_str(function, "name") or "",
                        "arguments": _opt_str(function, "arguments") or "",
                    },
                }
            )
        return _reply(
            content=_opt_str(message, "content"),
            name=_opt_str(message, "name"),
            tool_calls=tool_calls,
            refusal=_opt_str(message, "refusal"),
            reasoning=_reasoning(message),
            usage=_usage(body.get("usage")),
            finish_reason=_opt_str(choice, "finish_reason"),
            model=_opt_str(body, "model") or None,
            response_id=_opt_str(body, "id") or None,
        )
    except _Malformed:
        return None


def _reply(
    *,
    content: str | None,
    name: str | None,
    tool_calls: list[dict[str, Any]],
    refusal: str | None,
    reasoning: str | None,
    usage: dict[str, int] | None,
    finish_reason: str | None,
    model: str | None,
    response_id: str | None,
) -> AssistantReply:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if name:
        message["name"] = name
    if tool_calls:
        message["tool_calls"] = tool_calls
    if refusal:
        message["refusal"] = refusal
    return AssistantReply(
        message=message,
        reasoning=reasoning or None,
        usage=usage,
        finish_reason=finish_reason,
        model=model,
        response_id=response_id,
    )


_TEXT_DELTA_KEYS = frozenset({"content", "role"})


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _Malformed


def _objects(value: Any) -> list[dict[str, Any]]:
    """A list of JSON objects, or nothing for null."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _Malformed
    return value


def _opt_dict(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise _Malformed


def _int(value: Any) -> int:
    if type(value) is int:  # bool is an int subclass, and never an index
        return value
    raise _Malformed


def _reasoning(obj: dict[str, Any]) -> str | None:
    # DeepSeek and llama.cpp say `reasoning_content`, vLLM, Ollama and OpenRouter `reasoning`;
    # vLLM sent both with the same text while renaming, so take one, never both.
    reasoning_content = _opt_str(obj, "reasoning_content")
    reasoning = _opt_str(obj, "reasoning")
    return reasoning_content or reasoning


def _usage(value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Malformed
    return {key: count for key, count in value.items() if type(count) is int}
