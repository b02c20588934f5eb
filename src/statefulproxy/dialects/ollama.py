"""The Ollama ``/api/chat`` dialect: its requests to canonical messages and back (sans-I/O).

Wire format: https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion.
Messages are ``{role, content: str, images?: [base64], tool_calls?, thinking?, tool_name?}``;
tool-call arguments are objects and tool results name their tool instead of a call id. What
canonical messages cannot carry (``thinking`` of a sent message, images on non-user messages)
is dropped; nothing is kept native.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from ..errors import ClientError
from .base import (
    AssistantReply,
    Canonical,
    DialectName,
    ReplyDecoder,
    arguments_object,
    bad_request,
    data_url,
    image_media_type,
    parse_data_url,
    text_of,
)
from .ollama_stream import OllamaStreamDecoder, assistant_message, canonical_tool_call, reply_from_object

__all__ = ["OllamaDialect"]

_ROLES = ("system", "user", "assistant", "tool")
_NDJSON_TYPES = (b"application/x-ndjson", b"application/ndjson")


class OllamaDialect:
    """Ollama's ``/api/chat``: NDJSON streams unless ``"stream": false``; errors are ``{"error": str}``."""

    name: DialectName = "ollama"
    messages_key = "messages"

    def parse(self, body: dict[str, Any]) -> list[Canonical]:
        messages = body.get("messages")
        if messages is None:
            return []  # Ollama takes a chat request without messages: it only loads the model
        if not isinstance(messages, list):
            raise bad_request("messages must be an array", "messages")
        return _MessageParser().parse(messages)

    def render(self, body: dict[str, Any], system: Sequence[Canonical], history: Sequence[Canonical]) -> dict[str, Any]:
        own = body.get("messages")
        own = own if isinstance(own, list) else []
        rendered = [{"role": "system", "content": text_of(item.message.get("content"))} for item in system]
        rendered += _render_history(history)
        rendered += own[_leading_system_count(own) :]
        return {**body, "messages": rendered}

    def is_stream(self, body: dict[str, Any], path: str, query: str) -> bool:
        return body.get("stream") is not False

    def stream_decoder(self, content_type: bytes) -> ReplyDecoder | None:
        media_type = content_type.split(b";", 1)[0].strip()
        if media_type in _NDJSON_TYPES:
            return OllamaStreamDecoder()
        if media_type == b"application/json":
            # Some Ollama-compatible servers label NDJSON so; others answer one object with no line ending.
            return OllamaStreamDecoder(unterminated_end=True)
        return None

    def reply_from_body(self, body: Any) -> AssistantReply | None:
        return reply_from_object(body)

    def recorded_body(self, message: Canonical, model: str | None, stream: bool, query: str) -> tuple[bytes, bytes]:
        head = {"model": model or "", "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        reply = _render_assistant(message.message, with_ids=True)
        if not stream:
            whole = {**head, "message": reply, "done": True, "done_reason": "stop"}
            return orjson.dumps(whole), b"application/json"
        lines = [
            {**head, "message": reply, "done": False},
            {**head, "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"},
        ]
        return b"".join(orjson.dumps(line) + b"\n" for line in lines), b"application/x-ndjson"

    def error_body(self, error: ClientError) -> bytes:
        return orjson.dumps({"error": error.message})


def _leading_system_count(messages: list[Any]) -> int:
    count = 0
    while count < len(messages) and isinstance(messages[count], dict) and messages[count].get("role") == "system":
        count += 1
    return count


class _MessageParser:
    """Parses one messages array; binds each tool result to a call of the nearest assistant before it."""

    def __init__(self) -> None:
        self._unanswered: list[dict[str, Any]] | None = None  # None until an assistant message is seen

    def parse(self, messages: list[Any]) -> list[Canonical]:
        return [Canonical(self._parse_one(message, f"messages[{i}]")) for i, message in enumerate(messages)]

    def _parse_one(self, message: object, where: str) -> dict[str, Any]:
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object", where)
        role = message.get("role")
        # Ollama lower-cases roles when it decodes a message.
        role = role.lower() if isinstance(role, str) else role
        if role not in _ROLES:
            raise bad_request(f"{where}.role must be one of {', '.join(_ROLES)}", f"{where}.role")
        content = message.get("content")
        if not isinstance(content, str | None):
            raise bad_request(f"{where}.content must be a string", f"{where}.content")
        if role == "user":
            return {"role": "user", "content": _user_content(content or "", message.get("images"), where)}
        if role == "assistant":
            return self._assistant(content, message.get("tool_calls"), where)
        if role == "tool":
            return self._tool(content or "", message, where)
        return {"role": "system", "content": content or ""}

    def _assistant(self, content: str | None, calls: object, where: str) -> dict[str, Any]:
        if not isinstance(calls, list | None):
            raise bad_request(f"{where}.tool_calls must be an array", f"{where}.tool_calls")
        tool_calls = []
        for i, call in enumerate(calls or ()):
            canonical = canonical_tool_call(call, i)
            if canonical is None:
                param = f"{where}.tool_calls[{i}]"
                raise bad_request(f"{param} must be {{function: {{name, arguments: object}}}}", param)
            tool_calls.append(canonical)
        self._unanswered = list(tool_calls)
        return assistant_message(content, tool_calls)

    def _tool(self, content: str, message: dict[str, Any], where: str) -> dict[str, Any]:
        tool_name, call_id = message.get("tool_name"), message.get("tool_call_id")
        if not isinstance(tool_name, str | None):
            raise bad_request(f"{where}.tool_name must be a string", f"{where}.tool_name")
        call = self._answer(tool_name, call_id if isinstance(call_id, str) else None)
        if call is not None:
            return {"role": "tool", "tool_call_id": call["id"], "content": content}
        if isinstance(call_id, str) and call_id:
            return {"role": "tool", "tool_call_id": call_id, "content": content}
        # No call to bind it to in this request: the session layer binds it to the stored history.
        unbound: dict[str, Any] = {"role": "tool", "tool_call_id": "", "content": content}
        if tool_name:
            unbound["name"] = tool_name
        return unbound

    def _answer(self, tool_name: str | None, call_id: str | None) -> dict[str, Any] | None:
        """The first unanswered call this result answers (by id, else name, else order), marked answered."""
        if not self._unanswered:
            return None
        call = next((c for c in self._unanswered if call_id and c["id"] == call_id), None)
        if call is None and tool_name:
            call = next((c for c in self._unanswered if c["function"]["name"] == tool_name), None)
        if call is None and not call_id:
            call = self._unanswered[0]
        if call is not None:
            self._unanswered.remove(call)
        return call


def _user_content(text: str, images: object, where: str) -> str | list[dict[str, Any]]:
    if images is None or images == []:
        return text
    if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
        raise bad_request(f"{where}.images must be an array of base64 strings", f"{where}.images")
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for image in images:
        url = image if parse_data_url(image) else data_url(image_media_type(image), image)
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def _render_history(history: Sequence[Canonical]) -> list[dict[str, Any]]:
    rendered: list[dict[str, Any]] = []
    calls: list[Any] = []  # the tool calls of the nearest assistant message so far
    for item in history:
        message = item.message
        role = message.get("role")
        if role == "assistant":
            calls = message.get("tool_calls") or []
        if item.native and "ollama" in item.native:
            rendered.append(item.native["ollama"])
        elif role == "user":
            rendered.append(_render_user(message.get("content")))
        elif role == "assistant":
            rendered.append(_render_assistant(message, with_ids=False))
        elif role == "tool":
            rendered.append(_render_tool(message, calls))
        elif role in ("system", "developer"):
            rendered.append({"role": "system", "content": text_of(message.get("content"))})
    return rendered


def _render_user(content: object) -> dict[str, Any]:
    rendered: dict[str, Any] = {"role": "user", "content": text_of(content)}
    images = [image for image in map(_image_data, content) if image] if isinstance(content, list) else []
    if images:
        rendered["images"] = images
    return rendered


def _image_data(part: object) -> str | None:
    """The base64 data of an ``image_url`` part with a data URL; None for anything else (http URLs too)."""
    if not isinstance(part, dict) or part.get("type") != "image_url":
        return None
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    parsed = parse_data_url(url) if isinstance(url, str) else None
    return parsed[1] if parsed else None


def _render_assistant(message: dict[str, Any], *, with_ids: bool) -> dict[str, Any]:
    rendered: dict[str, Any] = {"role": "assistant", "content": text_of(message.get("content"))}
    calls = [call for call in message.get("tool_calls") or () if isinstance(call, dict)]
    if calls:
        rendered["tool_calls"] = [_render_tool_call(call, i, with_ids) for i, call in enumerate(calls)]
    return rendered


def _render_tool_call(call: dict[str, Any], index: int, with_id: bool) -> dict[str, Any]:
    function = call.get("function")
    function = function if isinstance(function, dict) else {}
    rendered_function = {"name": function.get("name") or "", "arguments": arguments_object(function.get("arguments"))}
    if not with_id:
        return {"function": rendered_function}
    # As Ollama 0.12+ answers: the call's id, and its place in the message as function.index.
    rendered: dict[str, Any] = {"id": call["id"]} if isinstance(call.get("id"), str) and call["id"] else {}
    return {**rendered, "function": {"index": index, **rendered_function}}


def _render_tool(message: dict[str, Any], calls: list[Any]) -> dict[str, Any]:
    rendered: dict[str, Any] = {"role": "tool", "content": text_of(message.get("content"))}
    call_id = message.get("tool_call_id")
    name = next(
        (
            call["function"].get("name")
            for call in calls
            if isinstance(call, dict) and call.get("id") == call_id and isinstance(call.get("function"), dict)
        ),
        message.get("name"),
    )
    if isinstance(name, str) and name:
        rendered["tool_name"] = name
    return rendered
