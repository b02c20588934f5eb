"""Anthropic Messages replies (sans-I/O): content blocks as a canonical assistant message, the
decoder of a streamed reply, and a recorded reply encoded back into that stream.

A stream is ``message_start``, then per content block ``content_block_start`` /
``content_block_delta``... / ``content_block_stop``, then ``message_delta`` (stop reason, cumulative
usage) and ``message_stop``; ``ping`` may come anywhere and an ``error`` event can arrive after the
200 (https://docs.anthropic.com/en/docs/build-with-claude/streaming). The canonical message is
built by ``assistant_from_blocks`` both for a reply and for the same message echoed back by a
client, so the two compare equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from .base import AssistantReply, arguments_string, bad_request
from .sse import ServerSentEvent, SSEDecodeError, SSEDecoder

__all__ = [
    "AnthropicStreamDecoder",
    "assistant_from_blocks",
    "block_type",
    "encode_stream",
    "has_thinking",
    "reply_from_blocks",
    "string_field",
]

_THINKING_TYPES = frozenset({"thinking", "redacted_thinking"})


def assistant_from_blocks(blocks: Sequence[Any], param: str) -> dict[str, Any]:
    """The canonical assistant message of Anthropic content blocks (``param`` names them in errors).

    Text blocks become the content (one: a string; several: text parts; none: null beside tool
    calls, else ""), ``tool_use`` blocks the tool calls; every other block type is dropped.
    """
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        where = f"{param}[{index}]"
        kind = block_type(block, where)
        if kind == "text":
            texts.append(string_field(block, "text", where))
        elif kind == "tool_use":
            arguments = block.get("input")
            if not isinstance(arguments, dict):
                raise bad_request(f"{where}.input must be an object", f"{where}.input")
            function = {"name": string_field(block, "name", where), "arguments": arguments_string(arguments)}
            tool_calls.append({"id": string_field(block, "id", where), "type": "function", "function": function})
    content: str | list[dict[str, Any]] | None
    if len(texts) == 1:
        content = texts[0]
    elif texts:
        content = [{"type": "text", "text": text} for text in texts]
    else:
        content = ""
    if content == "" and tool_calls:
        content = None  # what the canonical (OpenAI) form carries beside tool calls
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def has_thinking(blocks: Sequence[Any]) -> bool:
    """Whether the blocks hold a ``thinking`` or ``redacted_thinking`` block, kept native for replay."""
    return any(isinstance(block, dict) and block.get("type") in _THINKING_TYPES for block in blocks)


def reply_from_blocks(
    blocks: list[Any], usage: object, stop_reason: object, model: object, response_id: object
) -> AssistantReply:
    """The reply made of ``blocks``; raises ClientError when a block is malformed."""
    message = assistant_from_blocks(blocks, "content")
    thinking = [block.get("thinking") for block in blocks if block.get("type") == "thinking"]
    return AssistantReply(
        message=message,
        reasoning="\n\n".join(text for text in thinking if isinstance(text, str) and text) or None,
        usage=_usage(usage),
        finish_reason=stop_reason if isinstance(stop_reason, str) else None,
        model=model if isinstance(model, str) else None,
        response_id=response_id if isinstance(response_id, str) else None,
        native={"anthropic": blocks} if has_thinking(blocks) else None,
    )


def block_type(block: object, where: str) -> str:
    """The ``type`` of a request's content block; ClientError(400) naming ``where`` if it is not one."""
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise bad_request(f"{where} must be a content block object with a string type", where)
    kind: str = block["type"]
    return kind


def string_field(block: dict[str, Any], key: str, where: str) -> str:
    """``block[key]``, which must be a string; ClientError(400) naming the field otherwise."""
    value = block.get(key)
    if not isinstance(value, str):
        raise bad_request(f"{where}.{key} must be a string", f"{where}.{key}")
    return value


def _usage(usage: object) -> dict[str, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    if prompt is None and completion is None:
        return None
    prompt, completion = prompt or 0, completion or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Malformed(Exception):
    """An event the stream grammar does not allow."""


def _require(payload: object, key: str, kind: type) -> Any:
    value = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _Malformed(key)
    return value


def _optional_string(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key, "")
    if not isinstance(value, str):
        raise _Malformed(key)
    return value


def _opened_block(block: dict[str, Any]) -> dict[str, Any]:
    """A ``content_block_start`` block in the non-streamed shape (and key order) its deltas fill in."""
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": _optional_string(block, "text")}
    if kind == "thinking":
        thinking, signature = _optional_string(block, "thinking"), _optional_string(block, "signature")
        return {"type": "thinking", "thinking": thinking, "signature": signature}
    if kind == "redacted_thinking":
        return {"type": "redacted_thinking", "data": _require(block, "data", str)}
    if kind == "tool_use":
        arguments = block.get("input", {})
        if not isinstance(arguments, dict):
            raise _Malformed("input")
        return {
            "type": "tool_use",
            "id": _require(block, "id", str),
            "name": _require(block, "name", str),
            "input": arguments,
        }
    return dict(block)  # a server tool's block: dropped from the canonical message, kept in native


class AnthropicStreamDecoder:
    """Reassembles a streamed Messages reply; a ReplyDecoder.

    Like the anthropic SDK, it dispatches on the payload's ``type``, skips ``ping`` and events
    without an ``event:`` name or data, and takes an ``error`` event as the reply failing.
    ``done`` turns true on the chunk completing the ``message_stop`` event.
    """

    def __init__(self) -> None:
        self._events = SSEDecoder()
        self._done = False
        self._failed = False
        self._started = False
        self._response_id: object = None
        self._model: object = None
        self._usage: dict[str, Any] = {}
        self._stop_reason: object = None
        self._blocks: dict[int, dict[str, Any]] = {}
        self._partial_json: dict[int, list[str]] = {}  # tool input fragments, by block index

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
            events = self._events.feed(chunk)
        except SSEDecodeError:
            self._failed = True
            return
        for event in events:
            try:
                self._take(event)
            except _Malformed:
                self._failed = True
            if self._done or self._failed:
                return

    def result(self) -> AssistantReply:
        blocks = [self._blocks[index] for index in sorted(self._blocks)]
        usage = {"input_tokens": self._usage.get("input_tokens"), "output_tokens": self._usage.get("output_tokens")}
        return reply_from_blocks(blocks, usage, self._stop_reason, self._model, self._response_id)

    def _take(self, event: ServerSentEvent) -> None:
        # The SDK reads only named events (the SSE default name "message" means none was given).
        if event.event in ("ping", "message") or not event.data:
            return
        if event.event == "error":
            raise _Malformed("error event")
        try:
            payload = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            raise _Malformed("data") from None
        kind = _require(payload, "type", str)
        if kind == "message_start":
            self._start(payload)
        elif kind == "error" or not self._started:
            raise _Malformed(kind)
        elif kind == "content_block_start":
            self._open_block(payload)
        elif kind == "content_block_delta":
            self._apply_delta(payload)
        elif kind == "content_block_stop":
            self._close_block(_require(payload, "index", int))
        elif kind == "message_delta":
            self._take_message_delta(payload)
        elif kind == "message_stop":
            for index in list(self._partial_json):
                self._close_block(index)
            self._done = True
        # other event types are new API features the reply does not depend on

    def _start(self, payload: dict[str, Any]) -> None:
        if self._started:
            raise _Malformed("second message_start")
        message = _require(payload, "message", dict)
        self._started = True
        self._response_id, self._model = message.get("id"), message.get("model")
        usage = message.get("usage")
        if isinstance(usage, dict):
            self._usage.update(usage)

    def _open_block(self, payload: dict[str, Any]) -> None:
        index = _require(payload, "index", int)
        if index in self._blocks:
            raise _Malformed("index")
        self._blocks[index] = _opened_block(_require(payload, "content_block", dict))

    def _apply_delta(self, payload: dict[str, Any]) -> None:
        block = self._blocks.get(_require(payload, "index", int))
        if block is None:
            raise _Malformed("index")
        delta = _require(payload, "delta", dict)
        kind, block_kind = delta.get("type"), block["type"]
        if kind == "text_delta" and block_kind == "text":
            block["text"] += _require(delta, "text", str)
        elif kind == "input_json_delta":
            self._partial_json.setdefault(payload["index"], []).append(_require(delta, "partial_json", str))
        elif kind == "thinking_delta" and block_kind == "thinking":
            block["thinking"] += _require(delta, "thinking", str)
        elif kind == "signature_delta" and block_kind == "thinking":
            block["signature"] = _require(delta, "signature", str)
        # citations_delta and unknown deltas add nothing the canonical message or a replay needs

    def _take_message_delta(self, payload: dict[str, Any]) -> None:
        delta = _require(payload, "delta", dict)
        if isinstance(delta.get("stop_reason"), str):
            self._stop_reason = delta["stop_reason"]
        usage = payload.get("usage")
        if isinstance(usage, dict):
            # cumulative counts: the latest replaces, and one left out keeps message_start's
            self._usage.update((key, value) for key, value in usage.items() if value is not None)

    def _close_block(self, index: int) -> None:
        if index not in self._blocks:
            raise _Malformed("index")
        fragments = self._partial_json.pop(index, None)
        if fragments is None:
            return
        text = "".join(fragments)
        try:
            arguments = orjson.loads(text) if text else {}
        except orjson.JSONDecodeError:
            raise _Malformed("partial_json") from None
        if not isinstance(arguments, dict):
            raise _Malformed("partial_json")
        self._blocks[index]["input"] = arguments


def encode_stream(blocks: Sequence[dict[str, Any]], model: str, stop_reason: str, response_id: str) -> bytes:
    """``blocks`` as the SSE event sequence the Messages API streams, ``message_start`` to ``message_stop``."""
    message: dict[str, Any] = {
        "id": response_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    events: list[dict[str, Any]] = [{"type": "message_start", "message": message}]
    for index, block in enumerate(blocks):
        opened, deltas = _streamed_block(block)
        events.append({"type": "content_block_start", "index": index, "content_block": opened})
        events.extend({"type": "content_block_delta", "index": index, "delta": delta} for delta in deltas)
        events.append({"type": "content_block_stop", "index": index})
    message_delta = {"stop_reason": stop_reason, "stop_sequence": None}
    events.append({"type": "message_delta", "delta": message_delta, "usage": {"output_tokens": 0}})
    events.append({"type": "message_stop"})
    return b"".join(b"event: %s\ndata: %s\n\n" % (event["type"].encode(), orjson.dumps(event)) for event in events)


def _streamed_block(block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A block as its ``content_block_start`` block and the deltas that fill it in."""
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        return {"type": "text", "text": ""}, [{"type": "text_delta", "text": text}] if text else []
    if kind == "thinking":
        deltas = []
        if block.get("thinking"):
            deltas.append({"type": "thinking_delta", "thinking": block["thinking"]})
        if block.get("signature"):
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        return {"type": "thinking", "thinking": "", "signature": ""}, deltas
    if kind == "tool_use":
        opened: dict[str, Any] = {"type": "tool_use", "id": block.get("id"), "name": block.get("name"), "input": {}}
        arguments = block.get("input")
        if not arguments:
            return opened, []
        return opened, [{"type": "input_json_delta", "partial_json": orjson.dumps(arguments).decode()}]
    return block, []  # redacted_thinking and server tool blocks arrive whole
