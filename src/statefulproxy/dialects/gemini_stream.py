"""Gemini ``generateContent`` replies, streamed or whole, reassembled into an AssistantReply (sans-I/O).

``:streamGenerateContent`` answers in one of two forms
(https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent):
with ``?alt=sse`` each GenerateContentResponse is an SSE ``data:`` event; without it the body
is ONE JSON array whose elements arrive one by one (``[{...}\\n,\\r\\n{...}]``). Each response
carries some parts of the reply; the one whose candidate has ``finishReason`` ends it (there
is no ``[DONE]``). ``{"error": {...}}`` may come as a chunk after HTTP 200.

Also holds the canonical form of a model content (``assistant_message``), which ``gemini.py``
parses with, so a reply and the same content echoed back by a client compare equal.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import orjson

from .base import AssistantReply, arguments_string
from .sse import MAX_BUFFER_BYTES, SSEDecodeError, SSEDecoder

__all__ = [
    "GeminiStreamDecoder",
    "JSONArrayError",
    "JSONArraySplitter",
    "assistant_message",
    "camel_part",
    "needs_native",
    "part_problem",
    "reply_from_response",
]

# Request bodies may spell fields in snake_case (the REST API's proto JSON accepts both, and
# Google's curl examples use it); replies always use camelCase.
_SNAKE_TO_CAMEL = {
    "inline_data": "inlineData",
    "file_data": "fileData",
    "function_call": "functionCall",
    "function_response": "functionResponse",
    "thought_signature": "thoughtSignature",
    "mime_type": "mimeType",
    "file_uri": "fileUri",
}
_NESTED = ("inlineData", "fileData")
_PLAIN_TEXT_KEYS = frozenset({"text", "thought"})


def camel_part(part: dict[str, Any]) -> dict[str, Any]:
    """A part with its snake_case field names in camelCase (a view to read; natives keep the original)."""
    if not any(key in _SNAKE_TO_CAMEL for key in part):
        return part
    out = {_SNAKE_TO_CAMEL.get(key, key): value for key, value in part.items()}
    for key in _NESTED:
        if isinstance(out.get(key), dict):
            out[key] = {_SNAKE_TO_CAMEL.get(name, name): value for name, value in out[key].items()}
    return out


def part_problem(part: object) -> tuple[str, str] | None:
    """(field, what it must be) when a camelCase part is malformed, else None."""
    if not isinstance(part, dict):
        return "", "must be an object"
    if "text" in part and not isinstance(part["text"], str):
        return ".text", "must be a string"
    call = part.get("functionCall")
    if call is not None and not (
        isinstance(call, dict) and isinstance(call.get("name"), str) and isinstance(call.get("args", {}), dict | None)
    ):
        return ".functionCall", "must be an object with a string 'name' and an object 'args'"
    response = part.get("functionResponse")
    if response is not None and not (
        isinstance(response, dict)
        and isinstance(response.get("name"), str)
        and isinstance(response.get("response", {}), dict | None)
    ):
        return ".functionResponse", "must be an object with a string 'name' and an object 'response'"
    blob = part.get("inlineData")
    if blob is not None and not (
        isinstance(blob, dict) and isinstance(blob.get("mimeType"), str) and isinstance(blob.get("data"), str)
    ):
        return ".inlineData", "must be an object with string 'mimeType' and 'data'"
    file = part.get("fileData")
    if file is not None and not (isinstance(file, dict) and isinstance(file.get("fileUri"), str)):
        return ".fileData", "must be an object with a string 'fileUri'"
    return None


def needs_native(parts: Sequence[dict[str, Any]]) -> bool:
    """Whether a model content's camelCase parts carry what the canonical form cannot: thoughts,
    signatures, or parts that are neither text nor function calls (code execution, inline images)."""
    for part in parts:
        if part.get("thought") is True or "thoughtSignature" in part:
            return True
        if "text" not in part and "functionCall" not in part:
            return True
    return False


def assistant_message(parts: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """The canonical assistant message of a model content's camelCase parts, and its thought text.

    Text is concatenated (a streamed reply is the same text in many parts); a call without an
    ``id`` gets ``call_<i>``, its place among the content's calls, so the same content gives the
    same ids from any source.
    """
    texts: list[str] = []
    thoughts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for part in parts:
        call = part.get("functionCall")
        if isinstance(call, dict):
            call_id = call.get("id")
            tool_calls.append(
                {
                    "id": call_id if isinstance(call_id, str) and call_id else f"call_{len(tool_calls)}",
                    "type": "function",
                    "function": {"name": call["name"], "arguments": arguments_string(call.get("args"))},
                }
            )
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") is True else texts).append(part["text"])
    text = "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if tool_calls else "")}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message, "".join(thoughts) if thoughts else None


def _usage(metadata: object) -> dict[str, int] | None:
    if not isinstance(metadata, dict):
        return None
    prompt = _count(metadata.get("promptTokenCount"))
    completion = _count(metadata.get("candidatesTokenCount")) + _count(metadata.get("thoughtsTokenCount"))
    total = metadata.get("totalTokenCount")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _count(total) if "totalTokenCount" in metadata else prompt + completion,
    }


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _candidate_parts(response: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]] | None:
    """The candidate of index 0 and its parts (``(None, [])`` without one, ``[]`` without content);
    None when malformed."""
    candidates = response.get("candidates")
    if candidates is None:
        return None, []
    if not isinstance(candidates, list) or not all(isinstance(candidate, dict) for candidate in candidates):
        return None
    candidate = next((candidate for candidate in candidates if candidate.get("index", 0) == 0), None)
    content = candidate.get("content") if candidate else None
    if content is None:
        return candidate, []
    parts = content.get("parts", []) if isinstance(content, dict) else None
    if not isinstance(parts, list) or any(part_problem(part) for part in parts):
        return None
    return candidate, parts


def reply_from_response(response: object) -> AssistantReply | None:
    """The reply in a whole GenerateContentResponse; None for an error payload, no candidate, or malformed."""
    if not isinstance(response, dict) or "error" in response:
        return None
    candidate, parts = _candidate_parts(response) or (None, [])
    if candidate is None:
        return None
    message, reasoning = assistant_message(parts)
    return AssistantReply(
        message=message,
        reasoning=reasoning,
        usage=_usage(response.get("usageMetadata")),
        finish_reason=_string(candidate.get("finishReason")),
        model=_string(response.get("modelVersion")),
        response_id=_string(response.get("responseId")),
        native={"gemini": parts} if needs_native(parts) else None,
    )


def _string(value: object) -> str | None:
    return value if isinstance(value, str) else None


class JSONArrayError(ValueError):
    """The bytes are not a JSON array of objects, or one element grew past the cap."""


_IN_STRING_STOP = re.compile(rb'["\\]')
_STRUCTURE = re.compile(rb'[{}"]')
_SPACE = frozenset(b" \t\r\n")


class JSONArraySplitter:
    """Splits one JSON array of objects, arriving in arbitrary chunks, into its elements' bytes.

    Tracks string and escape state and brace depth, so a brace or quote inside a string, an
    escape split from the byte it escapes, or a multibyte character split across chunks (its
    bytes are all >= 0x80, never structural) is handled. An element's bytes are returned only
    once complete; validating them as JSON is the caller's job. ``feed()`` returns the elements
    a chunk completes before any error, and sets ``error`` instead of raising.
    """

    def __init__(self, max_element_bytes: int = MAX_BUFFER_BYTES) -> None:
        self.max_element_bytes = max_element_bytes
        self.error: JSONArrayError | None = None
        self._expect: Literal["open", "first", "next", "element", "inside", "closed"] = "open"
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._pending: list[bytes] = []  # pieces of the element being read
        self._pending_len = 0

    @property
    def closed(self) -> bool:
        """True once the array's closing ``]`` was read."""
        return self._expect == "closed"

    def feed(self, chunk: bytes) -> list[bytes]:
        elements: list[bytes] = []
        position, end = 0, len(chunk)
        while position < end and self.error is None:
            if self._expect == "inside":
                start = position
                stop = self._scan(chunk, position)
                if stop < 0:
                    self._hold(chunk[start:])
                    break
                elements.append(b"".join([*self._pending, chunk[start:stop]]))
                self._pending, self._pending_len = [], 0
                self._expect, position = "next", stop
                continue
            byte = chunk[position]
            if byte in _SPACE:
                position += 1
            elif byte == 0x5B and self._expect == "open":  # [
                self._expect, position = "first", position + 1
            elif byte == 0x7B and self._expect in ("first", "element"):  # {
                self._expect, self._depth = "inside", 0
            elif byte == 0x2C and self._expect == "next":  # ,
                self._expect, position = "element", position + 1
            elif byte == 0x5D and self._expect in ("first", "next"):  # ]
                self._expect, position = "closed", position + 1
            else:
                self.error = JSONArrayError(f"unexpected byte {chunk[position : position + 1]!r} in a JSON array")
        return elements

    def _scan(self, chunk: bytes, position: int) -> int:
        """The offset just past the element's closing brace, or -1 when it goes on past ``chunk``."""
        end = len(chunk)
        while position < end:
            if self._escaped:
                self._escaped = False
                position += 1
            elif self._in_string:
                match = _IN_STRING_STOP.search(chunk, position)
                if match is None:
                    return -1
                position = match.end()
                if chunk[match.start()] == 0x5C:  # backslash: the next byte, maybe in the next chunk, is escaped
                    self._escaped = True
                else:
                    self._in_string = False
            else:
                match = _STRUCTURE.search(chunk, position)
                if match is None:
                    return -1
                position = match.end()
                byte = chunk[match.start()]
                if byte == 0x22:
                    self._in_string = True
                elif byte == 0x7B:
                    self._depth += 1
                else:
                    self._depth -= 1
                    if self._depth == 0:
                        return position
        return -1

    def _hold(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._pending_len += len(piece)
        if self._pending_len > self.max_element_bytes:
            self._pending, self._pending_len = [], 0
            self.error = JSONArrayError(f"JSON array element larger than {self.max_element_bytes} bytes")


class GeminiStreamDecoder:
    """Reassembles a streamed generateContent reply: SSE events (``sse=True``) or a JSON array."""

    def __init__(self, sse: bool) -> None:
        self._events = SSEDecoder() if sse else None
        self._array = None if sse else JSONArraySplitter()
        self._done = False
        self._failed = False
        self._parts: list[dict[str, Any]] = []
        self._usage: dict[str, int] | None = None
        self._finish_reason: str | None = None
        self._model: str | None = None
        self._response_id: str | None = None

    @property
    def done(self) -> bool:
        return self._done

    @property
    def failed(self) -> bool:
        return self._failed

    def feed(self, chunk: bytes) -> None:
        if self._done or self._failed or not chunk:
            return
        if self._events is not None:
            try:
                payloads: list[str | bytes] = [event.data for event in self._events.feed(chunk)]
            except SSEDecodeError:
                self._failed = True
                return
        else:
            assert self._array is not None
            payloads = list(self._array.feed(chunk))
        for payload in payloads:
            self._take(payload)
            if self._done or self._failed:
                return
        if self._array is not None and self._array.error is not None:
            self._failed = True

    def result(self) -> AssistantReply:
        """The reply; only valid once ``done``."""
        message, reasoning = assistant_message(self._parts)
        return AssistantReply(
            message=message,
            reasoning=reasoning,
            usage=self._usage,
            finish_reason=self._finish_reason,
            model=self._model,
            response_id=self._response_id,
            native={"gemini": _merged_parts(self._parts)} if needs_native(self._parts) else None,
        )

    def _take(self, payload: str | bytes) -> None:
        try:
            response = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._failed = True
            return
        if not isinstance(response, dict) or "error" in response:
            self._failed = True
            return
        found = _candidate_parts(response)
        if found is None:
            self._failed = True
            return
        candidate, parts = found
        self._parts.extend(parts)
        self._usage = _usage(response.get("usageMetadata")) or self._usage
        self._model = _string(response.get("modelVersion")) or self._model
        self._response_id = _string(response.get("responseId")) or self._response_id
        if candidate and candidate.get("finishReason"):
            self._finish_reason = _string(candidate["finishReason"])
            self._done = True


def _merged_parts(parts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streamed parts as one content: consecutive plain text parts with the same ``thought`` flag
    concatenated. A part with a ``thoughtSignature`` stays whole and apart, as Google's
    thought-signature guide asks: a signature must come back in the part that carried it."""
    merged: list[dict[str, Any]] = []
    for part in parts:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and part.keys() <= _PLAIN_TEXT_KEYS
            and previous.keys() <= _PLAIN_TEXT_KEYS
            and "text" in part
            and "text" in previous
            and (part.get("thought") is True) == (previous.get("thought") is True)
        ):
            merged[-1] = {**previous, "text": previous["text"] + part["text"]}
        else:
            merged.append(part)
    return merged
