"""Ollama ``/api/chat`` replies, streamed (NDJSON) or whole, reassembled into an AssistantReply (sans-I/O).

Each NDJSON line is a ChatResponse object: ``message.content`` and ``message.thinking`` are
fragments to concatenate, ``message.tool_calls`` come whole (arguments are objects, never split
across lines), and the line with ``"done": true`` ends the reply with ``done_reason`` and the
token counters. A line ``{"error": "..."}`` is an in-band error
(https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion).

Also holds the canonical assistant message and tool-call shapes ``ollama.py`` parses into, so a
reply and the same message echoed back by a client compare equal.
"""

from __future__ import annotations

from typing import Any

import orjson

from .base import AssistantReply, arguments_string
from .ndjson import MAX_LINE_BYTES, NDJSONDecoder, NDJSONLineTooLong

__all__ = ["OllamaStreamDecoder", "assistant_message", "canonical_tool_call", "reply_from_object"]


def canonical_tool_call(call: object, index: int) -> dict[str, Any] | None:
    """An Ollama tool call as a canonical one, or None if it is malformed.

    Ollama sends ids only since 0.12 and its Python client drops them, so a call without one
    gets ``call_<index>`` (its place in the message): stable for the same message from any source.
    """
    if not isinstance(call, dict):
        return None
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return None
    arguments = function.get("arguments")
    if arguments is not None and not isinstance(arguments, dict | str):
        return None
    call_id = call.get("id")
    return {
        "id": call_id if isinstance(call_id, str) and call_id else f"call_{index}",
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments_string(arguments)},
    }


def assistant_message(content: str | None, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The canonical assistant message: null content beside tool calls, else a string."""
    message: dict[str, Any] = {"role": "assistant", "content": content or (None if tool_calls else "")}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


class _ReplyBuilder:
    """Accumulates the ChatResponse objects of one reply."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.thinking: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.model: str | None = None
        self.usage: dict[str, int] | None = None
        self.finish_reason: str | None = None

    def add(self, chunk: object) -> bool:
        """Take one ChatResponse object; False when it is an error or malformed."""
        if not isinstance(chunk, dict) or chunk.get("error") is not None:
            return False
        message = chunk.get("message")
        if message is not None and not self._add_message(message):
            return False
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        if chunk.get("done") is True:
            self.finish_reason = chunk["done_reason"] if isinstance(chunk.get("done_reason"), str) else None
            self.usage = _usage(chunk)
        return True

    def _add_message(self, message: object) -> bool:
        if not isinstance(message, dict):
            return False
        content, thinking, tool_calls = message.get("content"), message.get("thinking"), message.get("tool_calls")
        if not isinstance(content, str | None) or not isinstance(thinking, str | None):
            return False
        if not isinstance(tool_calls, list | None):
            return False
        for call in tool_calls or ():
            canonical = canonical_tool_call(call, len(self.tool_calls))
            if canonical is None:
                return False
            self.tool_calls.append(canonical)
        if content:
            self.content.append(content)
        if thinking:
            self.thinking.append(thinking)
        return True

    def reply(self) -> AssistantReply:
        return AssistantReply(
            message=assistant_message("".join(self.content), self.tool_calls),
            reasoning="".join(self.thinking) or None,
            usage=self.usage,
            finish_reason=self.finish_reason,
            model=self.model,
            response_id=None,
        )


def _usage(chunk: dict[str, Any]) -> dict[str, int] | None:
    # Ollama omits a zero counter (Go's omitempty): a prompt served from its cache has no
    # prompt_eval_count at all.
    prompt, completion = _count(chunk.get("prompt_eval_count")), _count(chunk.get("eval_count"))
    if prompt is None and completion is None:
        return None
    prompt, completion = prompt or 0, completion or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def reply_from_object(body: object) -> AssistantReply | None:
    """The reply in a non-streamed ``/api/chat`` body; None for an error payload or anything malformed."""
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        return None
    builder = _ReplyBuilder()
    return builder.reply() if builder.add(body) else None


class OllamaStreamDecoder:
    """Reassembles an NDJSON ``/api/chat`` reply; a ReplyDecoder.

    ``done`` turns true on the chunk holding the line ending of the ``"done": true`` line. With
    ``unterminated_end=True`` (a body labelled ``application/json``, which may be one object with
    no line ending at all) it turns true as soon as the held last line is a whole final object.
    """

    def __init__(self, *, unterminated_end: bool = False, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._lines = NDJSONDecoder(max_line_bytes)
        self._unterminated_end = unterminated_end
        self._builder = _ReplyBuilder()
        self._done = False
        self._failed = False

    @property
    def done(self) -> bool:
        return self._done

    @property
    def failed(self) -> bool:
        return self._failed

    def feed(self, chunk: bytes) -> None:
        if self._done or self._failed:
            return
        try:
            lines = self._lines.feed(chunk)
        except NDJSONLineTooLong:
            self._failed = True
            return
        for line in lines:
            self._take_line(line)
            if self._done or self._failed:
                return
        if self._unterminated_end and chunk.rstrip().endswith(b"}"):
            self._take_final_partial()

    def result(self) -> AssistantReply:
        return self._builder.reply()

    def _take_line(self, line: bytes) -> None:
        try:
            chunk = orjson.loads(line)
        except orjson.JSONDecodeError:
            self._failed = True
            return
        if not self._builder.add(chunk):
            self._failed = True
        elif chunk.get("done") is True:
            self._done = True

    def _take_final_partial(self) -> None:
        # Only an object that ends the reply is taken here: any other would come back as a
        # complete line once its line ending arrives, and be counted twice.
        try:
            chunk = orjson.loads(self._lines.partial)
        except orjson.JSONDecodeError:
            return  # not a whole object yet
        if isinstance(chunk, dict) and (chunk.get("error") is not None or chunk.get("done") is True):
            self._failed = not self._builder.add(chunk)
            self._done = not self._failed
