"""The Anthropic Messages dialect (``POST .../v1/messages``), sans-I/O.

The system prompt is the top-level ``system`` field (a string or text blocks); the conversation
alternates ``user`` and ``assistant`` messages of content blocks, tool results travelling as
``tool_result`` blocks of a user message (https://docs.anthropic.com/en/api/messages). A message
with ``thinking`` / ``redacted_thinking`` blocks keeps its blocks native: the API wants them
back unmodified, signatures included, during tool use.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import orjson

from ..errors import ClientError
from .anthropic_stream import (
    AnthropicStreamDecoder,
    assistant_from_blocks,
    block_type,
    encode_stream,
    has_thinking,
    reply_from_blocks,
    string_field,
)
from .base import (
    AssistantReply,
    Canonical,
    DialectName,
    ReplyDecoder,
    arguments_object,
    bad_request,
    data_url,
    parse_data_url,
    text_of,
)

__all__ = ["AnthropicDialect"]

# The error type the API sends with each status; the SDK picks its exception class by status.
_ERROR_TYPES = {
    400: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    422: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    431: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class AnthropicDialect:
    """Anthropic Messages requests and replies; a Dialect."""

    name: DialectName = "anthropic"
    messages_key = "messages"

    def parse(self, body: dict[str, Any]) -> list[Canonical]:
        canonical: list[Canonical] = []
        system = body.get("system")
        if system not in (None, "", []):  # the API takes an empty system prompt as none
            system_message = {"role": "system", "content": _system_text(system)}
            canonical.append(Canonical(system_message, native={"anthropic": system}))
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise bad_request("messages must be an array", "messages")
        for index, message in enumerate(messages):
            where = f"messages[{index}]"
            if not isinstance(message, dict):
                raise bad_request(f"{where} must be an object", where)
            content = message.get("content")
            if not isinstance(content, str | list):
                raise bad_request(f"{where}.content must be a string or an array", f"{where}.content")
            role = message.get("role")
            if role == "user":
                canonical.extend(_parse_user(content, where))
            elif role == "assistant":
                canonical.append(_parse_assistant(content, where))
            else:
                raise bad_request(f'{where}.role must be "user" or "assistant"', f"{where}.role")
        return canonical

    def render(self, body: dict[str, Any], system: Sequence[Canonical], history: Sequence[Canonical]) -> dict[str, Any]:
        rendered = {key: value for key, value in body.items() if key not in ("system", "messages")}
        system_value = _render_system(system)
        if system_value is not None:
            rendered["system"] = system_value
        messages: list[dict[str, Any]] = []
        for canonical in history:
            message = _render_message(canonical)
            if message is not None:
                _append_alternating(messages, message)
        own = body.get("messages")
        own = list(own) if isinstance(own, list) else []
        if messages and own and isinstance(own[0], dict) and own[0].get("role") == messages[-1]["role"]:
            messages[-1] = _merged(messages[-1], own.pop(0))
        rendered["messages"] = messages + own
        return rendered

    def is_stream(self, body: dict[str, Any], path: str, query: str) -> bool:
        return body.get("stream") is True

    def stream_decoder(self, content_type: bytes) -> ReplyDecoder | None:
        if content_type.split(b";", 1)[0].strip() != b"text/event-stream":
            return None
        return AnthropicStreamDecoder()

    def reply_from_body(self, body: Any) -> AssistantReply | None:
        if not isinstance(body, dict) or body.get("type") != "message" or body.get("role") != "assistant":
            return None
        content = body.get("content")
        if not isinstance(content, list):
            return None
        try:
            return reply_from_blocks(
                content, body.get("usage"), body.get("stop_reason"), body.get("model"), body.get("id")
            )
        except ClientError:
            return None

    def recorded_body(self, message: Canonical, model: str | None, stream: bool, query: str) -> tuple[bytes, bytes]:
        native = message.native.get("anthropic") if message.native else None
        blocks = native if isinstance(native, list) else _assistant_blocks(message.message)
        stop_reason = "tool_use" if message.message.get("tool_calls") else "end_turn"
        response_id = f"msg_{secrets.token_hex(12)}"
        if stream:
            return encode_stream(blocks, model or "", stop_reason, response_id), b"text/event-stream"
        reply = {
            "id": response_id,
            "type": "message",
            "role": "assistant",
            "model": model or "",
            "content": blocks,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return orjson.dumps(reply), b"application/json"

    def error_body(self, error: ClientError) -> bytes:
        error_type = _ERROR_TYPES.get(error.status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": error_type, "message": error.message}})


def _system_text(system: object) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise bad_request("system must be a string or an array of text blocks", "system")
    texts = []
    for index, block in enumerate(system):
        where = f"system[{index}]"
        if block_type(block, where) != "text":
            raise bad_request(f'{where}.type must be "text"', f"{where}.type")
        texts.append(string_field(block, "text", where))
    return "\n\n".join(texts)


def _parse_user(content: str | list[Any], where: str) -> list[Canonical]:
    """A user message: its tool results as canonical tool messages, then the rest as one user message."""
    if isinstance(content, str):
        return [Canonical({"role": "user", "content": content})]
    canonical: list[Canonical] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        at = f"{where}.content[{index}]"
        kind = block_type(block, at)
        if kind == "text":
            parts.append({"type": "text", "text": string_field(block, "text", at)})
        elif kind == "image":
            part = _image_part(block, at)
            if part is not None:
                parts.append(part)
        elif kind == "tool_result":
            tool_message = {
                "role": "tool",
                "tool_call_id": string_field(block, "tool_use_id", at),
                "content": _tool_result_text(block.get("content"), at),
            }
            canonical.append(Canonical(tool_message))
        # documents, search results and other blocks have no canonical form
    if len(parts) == 1 and parts[0]["type"] == "text":
        canonical.append(Canonical({"role": "user", "content": parts[0]["text"]}))
    elif parts:
        canonical.append(Canonical({"role": "user", "content": parts}))
    return canonical


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any] | None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise bad_request(f"{where}.source must be an object", f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        url = data_url(
            string_field(source, "media_type", f"{where}.source"), string_field(source, "data", f"{where}.source")
        )
    elif kind == "url":
        url = string_field(source, "url", f"{where}.source")
    else:
        return None  # a Files API id has no URL
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result_text(content: object, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or an array", f"{where}.content")
    texts = []
    for index, block in enumerate(content):
        at = f"{where}.content[{index}]"
        if block_type(block, at) == "text":
            texts.append(string_field(block, "text", at))
    return "\n\n".join(texts)


def _parse_assistant(content: str | list[Any], where: str) -> Canonical:
    if isinstance(content, str):
        return Canonical({"role": "assistant", "content": content})
    message = assistant_from_blocks(content, f"{where}.content")
    return Canonical(message, native={"anthropic": content} if has_thinking(content) else None)


def _render_system(system: Sequence[Canonical]) -> Any:
    if len(system) == 1 and system[0].native and "anthropic" in system[0].native:
        return system[0].native["anthropic"]
    text = "\n\n".join(text for text in (text_of(item.message.get("content")) for item in system) if text)
    return text or None


def _render_message(canonical: Canonical) -> dict[str, Any] | None:
    """A canonical history message as an Anthropic one, or None when nothing of it can be sent."""
    message = canonical.message
    role = message.get("role")
    if role == "user":
        content = message.get("content")
        if isinstance(content, str):
            return {"role": "user", "content": content}
        blocks = _user_blocks(content) if isinstance(content, list) else []
        return {"role": "user", "content": blocks} if blocks else None
    if role == "assistant":
        if canonical.native and "anthropic" in canonical.native:
            return {"role": "assistant", "content": canonical.native["anthropic"]}
        blocks = _assistant_blocks(message)
        return {"role": "assistant", "content": blocks} if blocks else None
    if role == "tool":
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
        text = text_of(message.get("content"))
        if text:
            result["content"] = text
        return {"role": "user", "content": [result]}
    return None  # a system message past the leading ones: Anthropic has no such role


def _user_blocks(parts: list[Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str) and part["text"]:
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str):
                blocks.append({"type": "image", "source": _image_source(url)})
    return blocks


def _image_source(url: str) -> dict[str, str]:
    inline = parse_data_url(url)
    if inline is None:
        return {"type": "url", "url": url}
    return {"type": "base64", "media_type": inline[0], "data": inline[1]}


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A canonical assistant message as text blocks, then tool_use blocks; reasoning, name and refusal are not sent."""
    content = message.get("content")
    texts = [content] if isinstance(content, str) else []
    if isinstance(content, list):
        texts = [part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text} for text in texts if text]
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        arguments = arguments_object(function.get("arguments"))
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments})
    return blocks


def _append_alternating(messages: list[dict[str, Any]], message: dict[str, Any]) -> None:
    """Append ``message``, merged into the last one when the roles match: the API wants them alternating,
    and tool results (always in a user message) must share one message with the user text that follows."""
    if messages and messages[-1]["role"] == message["role"]:
        messages[-1] = _merged(messages[-1], message)
    else:
        messages.append(message)


def _merged(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    return {"role": first["role"], "content": _as_blocks(first.get("content")) + _as_blocks(second.get("content"))}


def _as_blocks(content: object) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return list(content) if isinstance(content, list) else []
