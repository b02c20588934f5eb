"""What every dialect implements, and the canonical form they all convert to and from (sans-I/O).

The canonical form of a message is an OpenAI chat message in its minimal replayable shape
(``sessions.messages.minimal``): ``role``, ``content`` (a string, null, or a list of OpenAI
content parts ``{"type": "text", "text"}`` / ``{"type": "image_url", "image_url": {"url"}}``),
``name``, ``tool_calls`` (``[{"id", "type": "function", "function": {"name", "arguments": <JSON
string>}}]``) and ``tool_call_id``. What one dialect carries that the canonical form cannot (an
Anthropic ``thinking`` block and its ``signature``, a Gemini ``thoughtSignature``) travels beside
the message as ``native[<dialect name>]`` and is replayed verbatim to that dialect only.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from ..errors import ClientError

DialectName = Literal["openai", "anthropic", "ollama", "gemini"]

SYSTEM_ROLES = frozenset({"system", "developer"})


@dataclass(slots=True)  # not frozen: one is built per message on every turn; never changed once built
class Canonical:
    """One message in the canonical form, with what its dialect keeps beside it."""

    message: dict[str, Any]  # the OpenAI chat message
    native: dict[str, Any] | None = None  # {dialect name: what that dialect replays verbatim}


@dataclass(slots=True)
class AssistantReply:
    """The assistant turn an upstream produced, and what the proxy keeps beside it."""

    message: dict[str, Any]  # canonical: role, content, and only when present: name, tool_calls, refusal
    reasoning: str | None
    usage: dict[str, int] | None
    finish_reason: str | None
    model: str | None
    response_id: str | None
    native: dict[str, Any] | None = field(default=None)  # as in Canonical.native


class ReplyDecoder(Protocol):
    """Reassembles one streamed reply from its body bytes, split anywhere.

    ``done`` turns true on the very chunk that completes the reply (the dialect's
    terminator), so the caller can record the turn before it forwards that chunk. An
    in-band error event or anything malformed sets ``failed``; chunks after either are
    ignored. ``feed`` never raises.
    """

    @property
    def done(self) -> bool: ...

    @property
    def failed(self) -> bool: ...

    def feed(self, chunk: bytes) -> None: ...

    def result(self) -> AssistantReply:
        """The reply; only valid once ``done``."""
        ...


class Dialect(Protocol):
    """One wire format's chat requests and replies."""

    name: DialectName
    messages_key: str  # the body field holding the conversation: "messages", or Gemini's "contents"

    def parse(self, body: dict[str, Any]) -> list[Canonical]:
        """The body's prompt as canonical messages: its system prompt first (as ``system``
        messages, whether the body carries it in a field or as leading messages), then the
        conversation. A malformed prompt is a ClientError(400) naming the field."""
        ...

    def render(self, body: dict[str, Any], system: Sequence[Canonical], history: Sequence[Canonical]) -> dict[str, Any]:
        """``body`` with its prompt rebuilt: ``system`` as its system prompt (none if empty), then
        ``history`` converted to this dialect, then the conversation messages ``body`` itself
        carries, unchanged. ``body``'s own system prompt is dropped: it is in ``system`` when the
        caller wants it. Drops what the dialect cannot express; never invents content."""
        ...

    def is_stream(self, body: dict[str, Any], path: str, query: str) -> bool:
        """Whether the request asks for a streamed reply (``query``: the raw query string)."""
        ...

    def stream_decoder(self, content_type: bytes) -> ReplyDecoder | None:
        """A decoder for a 2xx reply body of ``content_type`` (lower-cased) to a streaming
        request, or None when this dialect does not stream in that type."""
        ...

    def reply_from_body(self, body: Any) -> AssistantReply | None:
        """The reply in a parsed, non-streamed response body; None if it is not one (an error payload)."""
        ...

    def recorded_body(self, message: Canonical, model: str | None, stream: bool, query: str) -> tuple[bytes, bytes]:
        """A recorded assistant message as this dialect's reply, streamed or not as the request
        (its query string) asked: (body, content type). Answers a retried turn from the store,
        without calling the upstream."""
        ...

    def error_body(self, error: ClientError) -> bytes:
        """The proxy's own error in this dialect's shape, so its SDK raises the matching exception."""
        ...


def arguments_object(arguments: object) -> dict[str, Any]:
    """A canonical tool call's ``arguments`` (a JSON string) as the object other dialects send.

    Arguments that are not a JSON object (a model's malformed output) become ``{}``: the
    dialects that take objects cannot carry them.
    """
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str | bytes) or not arguments:
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def arguments_string(arguments: object) -> str:
    """An object's canonical ``arguments``: compact JSON, so the same call compares equal from any dialect."""
    if isinstance(arguments, str):
        return arguments
    return orjson.dumps(arguments if arguments is not None else {}).decode()


def data_url(media_type: str, data: str) -> str:
    return f"data:{media_type};base64,{data}"


def parse_data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a ``data:<type>;base64,<data>`` URL, else None."""
    if not url.startswith("data:"):
        return None
    head, comma, data = url[5:].partition(",")
    if not comma or not head.endswith(";base64"):
        return None
    return head[: -len(";base64")] or "application/octet-stream", data


_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"), (b"RIFF", "image/webp"))


def image_media_type(data: str) -> str:
    """The media type of base64 image data, read from its first bytes (Ollama sends none)."""
    try:
        head = base64.b64decode(data[:16] + "=" * (-len(data[:16]) % 4))
    except (binascii.Error, ValueError):
        return "application/octet-stream"
    return next((media for magic, media in _MAGIC if head.startswith(magic)), "application/octet-stream")


def text_of(content: object) -> str:
    """The text of a canonical content (a string, null, or parts): text parts joined, images left out."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def bad_request(message: str, param: str) -> ClientError:
    return ClientError(400, message, param=param)
