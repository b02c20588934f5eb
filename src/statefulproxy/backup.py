"""One session a JSON line: what ``statefulproxy sessions export`` writes and ``import`` reads (CONTRACT.md 7).

A line is the session object exactly as ``GET /v1/sessions/{id}`` returns it, plus ``messages``:
the whole history as ``GET /v1/sessions/{id}/messages`` shows it. The API does not show all that
is kept of a message: its dialect-native form (an Anthropic thinking block's signature, a Gemini
``thoughtSignature``, replayed byte-equal to that dialect), the reply's usage, finish reason and
model, and reasoning kept in the replayed field (``reasoning_content``/``reasoning``). So a line
also carries ``stored``, beside ``messages`` and one entry each: what the message object leaves
out, as ``{"info": {...}, "replay": {...}}`` (``{}`` when nothing is left out; ``stored`` is absent
when nothing at all is). An import rebuilds each message from the two and refuses a message
object that is not one the proxy could have stored. Pure functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from .asgi.api_models import message_object, session_object
from .dialects.base import SYSTEM_ROLES
from .sessions.identity import SESSION_ID_PATTERN
from .sessions.messages import ReasoningField, minimal
from .stores.base import (
    ExpiresAfter,
    RestoredSession,
    SessionLimits,
    SessionRecord,
    StoredMessage,
)

# What message_object shows of a message's info document (only when truthy), and what it drops of its replay
_SHOWN_INFO = ("refusal", "reasoning", "metadata")
_REPLAY_REASONING: tuple[ReasoningField, ...] = ("reasoning_content", "reasoning")
_NOT_REPLAYED = frozenset({"id", "object", "created_at", *_SHOWN_INFO})
_MESSAGE_ID = re.compile(r'[^"\\\x00-\x1f]{1,256}')  # an info document must start {"id":"<id>" as written
_MAX_INT = 2**63 - 1


def export_line(record: SessionRecord, messages: Sequence[StoredMessage]) -> bytes:
    """The JSON line of a session (no newline)."""
    line = session_object(record)
    line["messages"] = [message_object(message) for message in messages]
    stored = [_left_out(message) for message in messages]
    if any(stored):
        line["stored"] = stored
    return orjson.dumps(line)


def _left_out(message: StoredMessage) -> dict[str, Any]:
    info, replay = orjson.loads(message.info), orjson.loads(message.replay)
    left: dict[str, Any] = {}
    hidden = {key: value for key, value in info.items() if key not in ("id", "created_at")}
    hidden = {key: value for key, value in hidden.items() if not (key in _SHOWN_INFO and value)}
    if hidden:
        left["info"] = hidden
    reasoning = {key: replay[key] for key in _REPLAY_REASONING if key in replay}
    if reasoning:
        left["replay"] = reasoning
    return left


def parse_line(raw: bytes) -> RestoredSession:
    """The session a line holds; ValueError saying what is wrong with it."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("not valid JSON") from None
    if not isinstance(line, dict) or line.get("object") != "session":
        raise ValueError('not a session object (no "object": "session")')
    session_id = line.get("id")
    if not isinstance(session_id, str) or SESSION_ID_PATTERN.fullmatch(session_id) is None:
        raise ValueError("'id' must be a session id: 1-128 characters of A-Z a-z 0-9 . _ : -")
    record = _record(line, session_id)
    messages = line.get("messages")
    if not isinstance(messages, list) or len(messages) != record.message_count:
        raise ValueError(f"'messages' must be a list of the session's {record.message_count} messages")
    stored = line.get("stored", [{}] * len(messages))
    if not isinstance(stored, list) or len(stored) != len(messages):
        raise ValueError("'stored' must have one entry for each message")
    history = [
        _message(index, message, left) for index, (message, left) in enumerate(zip(messages, stored, strict=True))
    ]
    leading = 0
    for message in messages:
        if message["role"] not in SYSTEM_ROLES:
            break
        leading += 1
    return RestoredSession(record, history, leading)


def _record(line: Mapping[str, Any], session_id: str) -> SessionRecord:
    status = line.get("status")
    if status not in ("active", "ended", "expired"):
        raise ValueError("'status' must be active, ended or expired")
    title = line.get("title")
    if title is not None and not isinstance(title, str):
        raise ValueError("'title' must be a string or null")
    created_at, last_active_at = _int(line, "created_at"), _int(line, "last_active_at")
    expires_after = _expires_after(line.get("expires_after"))
    expires_at = line.get("expires_at")
    if expires_after is not None:
        anchor = created_at if expires_after.anchor == "created_at" else last_active_at
        if expires_at != anchor + expires_after.seconds:
            raise ValueError(
                f"'expires_at' must be {anchor + expires_after.seconds}, its {expires_after.anchor} + seconds"
            )
    elif expires_at is not None:
        raise ValueError("'expires_at' must be null without 'expires_after'")
    rate_limits = line.get("rate_limits")
    if not isinstance(rate_limits, dict):
        raise ValueError("'rate_limits' must be an object")
    window = line.get("history_window")
    if window is not None and not isinstance(window, dict):
        raise ValueError("'history_window' must be an object or null")
    namespace = line.get("namespace")
    if namespace is not None and not (isinstance(namespace, str) and namespace):
        raise ValueError("'namespace' must be a path or null")
    return SessionRecord(
        id=session_id,
        status=status,
        title=title,
        message_count=_int(line, "message_count"),
        created_at=created_at,
        last_active_at=last_active_at,
        expires_at=expires_at,
        metadata=_string_map(line.get("metadata"), "metadata"),
        usage=_int_map(line.get("usage"), "usage"),
        expires_after=expires_after,
        limits=SessionLimits(
            _optional_int(rate_limits, "max_requests_per_1_minute", "rate_limits."), _optional_int(line, "max_requests")
        ),
        request_count=_int(line, "request_count"),
        history_window=None if window is None else (_int(window, "max_messages"), _int(window, "max_tokens")),
        namespace=namespace,
    )


def _message(index: int, message: object, left: object) -> StoredMessage:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or message.get("object") != "session.message":
        raise ValueError(f'{where} is not a message object (no "object": "session.message")')
    if not isinstance(left, dict) or set(left) - {"info", "replay"}:
        raise ValueError(f'stored[{index}] must be an object of "info" and "replay"')
    message_id = message.get("id")
    if not isinstance(message_id, str) or _MESSAGE_ID.fullmatch(message_id) is None:
        raise ValueError(f"{where}.id must be a message id")
    if not isinstance(message.get("role"), str):
        raise ValueError(f"{where}.role must be a string")
    info: dict[str, Any] = {"id": message_id, "created_at": _int(message, "created_at", f"{where}.")}
    info |= {key: message[key] for key in _SHOWN_INFO if key in message}
    info |= _object(left.get("info"), f"stored[{index}].info")
    replay = {key: value for key, value in message.items() if key not in _NOT_REPLAYED}
    replay |= _object(left.get("replay"), f"stored[{index}].replay")
    field: ReasoningField = next((key for key in _REPLAY_REASONING if key in replay), "none")
    canonical = minimal(replay, field)
    if canonical != replay:
        unexpected = sorted(set(replay) - set(canonical))
        detail = f"unexpected {', '.join(unexpected)}" if unexpected else "its fields are not in the stored form"
        raise ValueError(f"{where} is not a message the proxy stores ({detail})")
    return StoredMessage(orjson.dumps(canonical), orjson.dumps(info))


def _object(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object")
    return value


def _int(values: Mapping[str, Any], key: str, where: str = "") -> int:
    value = values.get(key)
    if type(value) is not int or not 0 <= value <= _MAX_INT:
        raise ValueError(f"'{where}{key}' must be an integer of at least 0")
    return value


def _optional_int(values: Mapping[str, Any], key: str, where: str = "") -> int | None:
    return None if values.get(key) is None else _int(values, key, where)


def _expires_after(value: object) -> ExpiresAfter | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("anchor") not in ("created_at", "last_active_at"):
        raise ValueError('\'expires_after\' must be null or {"anchor": created_at or last_active_at, "seconds": n}')
    return ExpiresAfter(value["anchor"], _int(value, "seconds", "expires_after."))


def _string_map(value: object, key: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise ValueError(f"'{key}' must be an object of strings")
    return value


def _int_map(value: object, key: str) -> dict[str, int]:
    if not isinstance(value, dict) or not all(type(item) is int for item in value.values()):
        raise ValueError(f"'{key}' must be an object of integers")
    return value
