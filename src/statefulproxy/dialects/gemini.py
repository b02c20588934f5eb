"""The Gemini native ``generateContent`` dialect (sans-I/O).

A request is ``{"contents": [{"role": "user" | "model", "parts": [...]}], "systemInstruction"?,
"tools"?, "generationConfig"?, ...}`` (https://ai.google.dev/api/generate-content). Function
results are ``functionResponse`` parts of a ``user`` content; a part may carry an opaque
``thoughtSignature`` that must come back exactly as received
(https://ai.google.dev/gemini-api/docs/thought-signatures), so a model content holding one,
or thought parts, is kept verbatim in ``native["gemini"]`` and replayed from there.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

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
    parse_data_url,
    text_of,
)
from .gemini_stream import (
    GeminiStreamDecoder,
    assistant_message,
    camel_part,
    needs_native,
    part_problem,
    reply_from_response,
)

__all__ = ["GeminiDialect"]

_SYSTEM_KEYS = ("systemInstruction", "system_instruction")
_USER_ROLES = frozenset({"user", "function"})  # "function": the role v1beta once gave function results

# google.rpc.Code names, as the API reports them for each HTTP status
# (https://cloud.google.com/apis/design/errors#handling_errors)
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    405: "INVALID_ARGUMENT",
    413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    431: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class GeminiDialect:
    """Gemini's ``models/{model}:generateContent`` and ``:streamGenerateContent``."""

    name: DialectName = "gemini"
    messages_key = "contents"

    def parse(self, body: dict[str, Any]) -> list[Canonical]:
        contents = body.get("contents", [])
        if not isinstance(contents, list):
            raise bad_request("contents must be an array of Content objects", "contents")
        return [*_system_messages(body), *_ContentsParser(contents).parse()]

    def render(self, body: dict[str, Any], system: Sequence[Canonical], history: Sequence[Canonical]) -> dict[str, Any]:
        rendered = {key: value for key, value in body.items() if key not in _SYSTEM_KEYS}
        own = body.get("contents")
        rendered["contents"] = _joined(_render_history(history), own if isinstance(own, list) else [])
        instruction = _system_instruction(system)
        if instruction is not None:
            rendered["systemInstruction"] = instruction
        return rendered

    def is_stream(self, body: dict[str, Any], path: str, query: str) -> bool:
        return path.endswith(":streamGenerateContent")

    def stream_decoder(self, content_type: bytes) -> ReplyDecoder | None:
        media_type = content_type.split(b";", 1)[0].strip()
        if media_type == b"text/event-stream":
            return GeminiStreamDecoder(sse=True)
        if media_type == b"application/json":
            return GeminiStreamDecoder(sse=False)
        return None

    def reply_from_body(self, body: Any) -> AssistantReply | None:
        return reply_from_response(body)

    def recorded_body(self, message: Canonical, model: str | None, stream: bool, query: str) -> tuple[bytes, bytes]:
        native = message.native.get("gemini") if message.native else None
        parts = native if isinstance(native, list) else _reply_parts(message.message)
        response: dict[str, Any] = {
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 0, "candidatesTokenCount": 0, "totalTokenCount": 0},
        }
        if model:
            response["modelVersion"] = model
        payload = orjson.dumps(response)
        if not stream:
            return payload, b"application/json"
        if any(key == "alt" and value.lower() == "sse" for key, value in parse_qsl(query)):
            return b"data: " + payload + b"\r\n\r\n", b"text/event-stream"
        return b"[" + payload + b"]", b"application/json"

    def error_body(self, error: ClientError) -> bytes:
        status = _STATUS_NAMES.get(error.status, "INTERNAL")
        return orjson.dumps({"error": {"code": error.status, "message": error.message, "status": status}})


def _system_messages(body: dict[str, Any]) -> list[Canonical]:
    key = next((key for key in _SYSTEM_KEYS if body.get(key) is not None), None)
    if key is None:
        return []
    instruction = body[key]
    parts = instruction.get("parts") if isinstance(instruction, dict) else None
    if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
        raise bad_request(f"{key} must be a Content object with an array of parts", key)
    text = "\n".join(part["text"] for part in parts if isinstance(part.get("text"), str))
    return [Canonical({"role": "system", "content": text}, native={"gemini": instruction})]


@dataclass(slots=True)
class _OpenCall:
    name: str
    id: str
    answered: bool = False


class _ContentsParser:
    """Turns ``contents`` into canonical messages, binding function results to their calls."""

    def __init__(self, contents: list[Any]) -> None:
        self._contents = contents
        self._open_calls: list[_OpenCall] = []  # the calls of the nearest preceding model content

    def parse(self) -> list[Canonical]:
        messages: list[Canonical] = []
        index, count = 0, len(self._contents)
        while index < count:
            if self._role(index) != "model":
                messages.extend(self._user(index))
                index += 1
                continue
            # Consecutive model contents are one turn: the SDK's chat echoes a streamed reply as
            # one content per chunk, which must compare equal to the reply reassembled whole.
            parts: list[dict[str, Any]] = []
            while index < count and self._role(index) == "model":
                parts.extend(self._parts(index))
                index += 1
            messages.append(self._assistant(parts))
        return messages

    def _role(self, index: int) -> str:
        content = self._contents[index]
        if not isinstance(content, dict):
            raise bad_request(f"contents[{index}] must be a Content object", f"contents[{index}]")
        role = content.get("role") or "user"
        if role != "model" and not (isinstance(role, str) and role in _USER_ROLES):
            raise bad_request(f"contents[{index}].role must be 'user' or 'model'", f"contents[{index}].role")
        return str(role)

    def _parts(self, index: int) -> list[dict[str, Any]]:
        parts = self._contents[index].get("parts")
        if parts is None:
            return []  # the SDK sends a model content without parts for an empty reply
        if not isinstance(parts, list):
            raise bad_request(f"contents[{index}].parts must be an array", f"contents[{index}].parts")
        for number, part in enumerate(parts):
            problem = part_problem(camel_part(part) if isinstance(part, dict) else part)
            if problem is not None:
                field, requirement = problem
                param = f"contents[{index}].parts[{number}]{field}"
                raise bad_request(f"{param} {requirement}", param)
        return parts

    def _assistant(self, parts: list[dict[str, Any]]) -> Canonical:
        readable = [camel_part(part) for part in parts]
        message, _ = assistant_message(readable)
        self._open_calls = [_OpenCall(call["function"]["name"], call["id"]) for call in message.get("tool_calls", [])]
        return Canonical(message, native={"gemini": parts} if needs_native(readable) else None)

    def _user(self, index: int) -> list[Canonical]:
        messages: list[Canonical] = []
        content: list[dict[str, Any]] = []
        for part in map(camel_part, self._parts(index)):
            if part.get("functionResponse") is not None:
                messages.append(self._tool(part["functionResponse"]))
            elif "text" in part:
                content.append({"type": "text", "text": part["text"]})
            elif part.get("inlineData") is not None:
                blob = part["inlineData"]
                content.append({"type": "image_url", "image_url": {"url": data_url(blob["mimeType"], blob["data"])}})
            elif part.get("fileData") is not None:
                content.append({"type": "image_url", "image_url": {"url": part["fileData"]["fileUri"]}})
            # other parts (executableCode, videoMetadata, ...) have no canonical form
        if len(content) == 1 and content[0]["type"] == "text":
            messages.append(Canonical({"role": "user", "content": content[0]["text"]}))
        elif content:
            messages.append(Canonical({"role": "user", "content": content}))
        return messages

    def _tool(self, response: dict[str, Any]) -> Canonical:
        body = orjson.dumps(response.get("response") or {}).decode()
        given = response.get("id")
        if isinstance(given, str) and given:
            call = next((call for call in self._open_calls if call.id == given and not call.answered), None)
        else:
            call = next((c for c in self._open_calls if c.name == response["name"] and not c.answered), None)
        if call is not None:
            call.answered = True
        call_id = given if isinstance(given, str) and given else call.id if call else None
        if call_id is None:
            # nothing here to bind it to: the session layer binds it to the stored history
            return Canonical({"role": "tool", "tool_call_id": "", "content": body, "name": response["name"]})
        return Canonical({"role": "tool", "tool_call_id": call_id, "content": body})


def _system_instruction(system: Sequence[Canonical]) -> Any:
    if len(system) == 1 and system[0].native and "gemini" in system[0].native:
        return system[0].native["gemini"]
    text = "\n".join(text_of(message.message.get("content")) for message in system)
    return {"parts": [{"text": text}]} if text else None


def _render_history(history: Sequence[Canonical]) -> list[dict[str, Any]]:
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name, from the latest assistant message
    for canonical in history:
        message = canonical.message
        role = message.get("role")
        native = canonical.native.get("gemini") if canonical.native else None
        if role == "assistant":
            call_names = {
                call["id"]: call["function"]["name"]
                for call in message.get("tool_calls") or []
                if isinstance(call, dict) and isinstance(call.get("function"), dict)
            }
            _append(contents, "model", native if isinstance(native, list) else _model_parts(message))
        elif role == "user":
            _append(contents, "user", native if isinstance(native, list) else _user_parts(message.get("content")))
        elif role == "tool":
            _append(contents, "user", [_function_response(message, call_names)])
        # system messages past the leading ones have no place in Gemini contents
    return contents


def _append(contents: list[dict[str, Any]], role: str, parts: list[Any]) -> None:
    """Adds a content, merged into the last one when it has the same role (Gemini wants turns to alternate)."""
    if not parts:
        return  # Gemini refuses a content without parts
    if contents and contents[-1]["role"] == role:
        contents[-1] = {"role": role, "parts": [*contents[-1]["parts"], *parts]}
    else:
        contents.append({"role": role, "parts": parts})


def _joined(history: list[dict[str, Any]], own: list[Any]) -> list[Any]:
    """History, then the body's own contents unchanged, merging the two that meet if they share a role."""
    if not history or not own or not isinstance(own[0], dict) or not isinstance(own[0].get("parts"), list):
        return [*history, *own]
    first = own[0]
    role = first.get("role") or "user"
    if role != history[-1]["role"]:
        return [*history, *own]
    merged = {**first, "role": role, "parts": [*history[-1]["parts"], *first["parts"]]}
    return [*history[:-1], merged, *own[1:]]


def _model_parts(message: dict[str, Any], with_ids: bool = False) -> list[dict[str, Any]]:
    """A canonical assistant message as Gemini parts: its text, then its calls (ids only if ``with_ids``
    and not the ``call_<i>`` a call without one is given)."""
    text = text_of(message.get("content"))
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        function_call: dict[str, Any] = {
            "name": function.get("name"),
            "args": arguments_object(function.get("arguments")),
        }
        if with_ids and call.get("id") and call["id"] != f"call_{index}":
            function_call["id"] = call["id"]
        parts.append({"functionCall": function_call})
    return parts


def _reply_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    # ids kept so that the client's echo of this reply parses to the same call ids
    return _model_parts(message, with_ids=True) or [{"text": ""}]


def _user_parts(content: object) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str) and part["text"]:
            parts.append({"text": part["text"]})
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str):
                parts.append(_media_part(url))
    return parts


def _media_part(url: str) -> dict[str, Any]:
    inline = parse_data_url(url)
    if inline is not None:
        return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
    media_type = mimetypes.guess_type(urlsplit(url).path)[0] or "application/octet-stream"
    return {"fileData": {"mimeType": media_type, "fileUri": url}}


def _function_response(message: dict[str, Any], call_names: dict[str, str]) -> dict[str, Any]:
    name = call_names.get(message.get("tool_call_id") or "") or message.get("name") or ""
    content = message.get("content")
    text = content if isinstance(content, str) else text_of(content)
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    return {"functionResponse": {"name": name, "response": parsed if isinstance(parsed, dict) else {"result": text}}}
