"""Who a request belongs to: its session id and its owner (a keyed hash of its credential).

Pure functions over the parsed body and the ASGI header list.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

from ..errors import ClientError

SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MINTED_PREFIX = "sess_"

Headers = Iterable[tuple[bytes, bytes]]


def validate_session_id(value: object, source: str) -> str:
    if not isinstance(value, str) or SESSION_ID_PATTERN.fullmatch(value) is None:
        raise ClientError(
            400,
            f"Invalid session id in {source}: expected 1-128 characters of A-Z a-z 0-9 . _ : -",
            param=source,
            code="invalid_session_id",
        )
    return value


def body_session_id(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """The session id a body carries and where, or None. Conflicting body sources are a 400."""
    found: list[tuple[str, object]] = []
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and "session_id" in metadata:
        found.append(("metadata.session_id", metadata["session_id"]))
    for key in ("session_id", "sessionId"):
        if key in body:
            found.append((key, body[key]))
    return _agree(found)


def header_session_id(headers: Headers, names: frozenset[bytes]) -> tuple[str, str] | None:
    """The session id carried by the configured headers (names lowercased), or None."""
    found: list[tuple[str, object]] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in names:
            found.append((f"header {lowered.decode('latin-1')}", value.decode("latin-1")))
    return _agree(found)


def resolve_session_id(from_body: tuple[str, str] | None, from_headers: tuple[str, str] | None) -> str | None:
    """The request's session id; a body source and a header that disagree are a 400."""
    found = _agree([source for source in (from_body, from_headers) if source is not None])
    return found[1] if found else None


def _agree(found: list[tuple[str, object]]) -> tuple[str, str] | None:
    if not found:
        return None
    source, value = found[0]
    session_id = validate_session_id(value, source)
    for other_source, other in found[1:]:
        if other != session_id:
            raise ClientError(
                400,
                f"Conflicting session ids: {source} and {other_source} disagree.",
                param=other_source,
                code="conflicting_session_id",
            )
    return source, session_id


def mint_session_id() -> str:
    return MINTED_PREFIX + secrets.token_hex(16)  # 128 random bits


_KEY_HEADERS = (b"x-api-key", b"api-key", b"x-goog-api-key")
_KEY_PARAMS = (b"api-key", b"key")


def credential(headers: Headers, query_string: bytes = b"") -> bytes | None:
    """The caller's credential, whatever form it takes; None only when the request carries none.

    In this order (CONTRACT.md section 4): the ``Authorization: Bearer`` token (any whitespace
    after ``Bearer``); the ``x-api-key``, ``api-key`` or ``x-goog-api-key`` header; the ``api-key``
    or ``key`` query parameter (Azure, Gemini); any other ``Authorization`` value, whole (Basic,
    other schemes). Every credential the upstream may accept is an owner of its own: none falls
    into the shared anonymous one.
    """
    bearer = authorization = None
    keys: dict[bytes, bytes] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"authorization":
            if authorization is None:
                authorization = value.strip()
                scheme, token = _scheme_and_token(authorization)
                if scheme.lower() == b"bearer" and token:
                    bearer = token
        elif lowered in _KEY_HEADERS and value.strip():
            keys.setdefault(lowered, value.strip())
    if bearer is not None:
        return bearer
    for header in _KEY_HEADERS:
        if header in keys:
            return keys[header]
    if query_string:
        found = _query_key(query_string)
        if found is not None:
            return found
    # taken whole, scheme included: the same key sent as Basic and as Bearer are two owners
    return authorization or None


def _scheme_and_token(value: bytes) -> tuple[bytes, bytes]:
    parts = value.split(None, 1)  # any run of whitespace: "Bearer\tkey" is a bearer token too
    if len(parts) < 2:
        return (parts[0] if parts else b""), b""
    return parts[0], parts[1].strip()


def _query_key(query_string: bytes) -> bytes | None:
    found: dict[bytes, bytes] = {}
    for pair in query_string.split(b"&"):
        name, _, value = pair.partition(b"=")
        name = unquote_to_bytes(name.replace(b"+", b" "))
        if name in _KEY_PARAMS and value and name not in found:
            found[name] = unquote_to_bytes(value.replace(b"+", b" "))
    return next((found[name] for name in _KEY_PARAMS if found.get(name)), None)


@functools.lru_cache(maxsize=4096)
def owner_of(credential: bytes | None, secret: bytes) -> str:
    """The owner of a credential: a keyed hash of it; the credential itself is never stored.

    Cached in this process's memory (the busiest credentials' hashes, not recomputed per request).
    """
    message = b"anonymous" if credential is None else b"key:" + credential
    return hmac.digest(secret, message, hashlib.sha256).hex()[:32]


CLIENT_SECRET_PREFIX = "spcs_"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a client secret opens: one session of one owner, on the chat path of one dialect,
    with the model and the reply length its creator may have pinned."""

    owner: str
    session_id: str
    dialect: str = "openai"
    model: str | None = None
    max_tokens: int | None = None

    @classmethod
    def from_record(cls, owner: str, session_id: str, pins: bytes) -> Grant:
        found = orjson.loads(pins) if pins else {}
        return cls(owner, session_id, found.get("dialect") or "openai", found.get("model"), found.get("max_tokens"))


def mint_client_secret() -> str:
    return CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32)  # 256 random bits


def client_secret_hash(token: bytes) -> str:
    """What is stored of a client secret: it is shown once and never kept."""
    return hashlib.sha256(token).hexdigest()


def client_secret_of(headers: Headers) -> bytes | None:
    """The bearer token when it is a session client secret (``spcs_...``), else None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            if b"spcs_" not in value:  # the common case, on every request: no split needed
                return None
            scheme, token = _scheme_and_token(value.strip())
            if scheme.lower() == b"bearer" and token.startswith(b"spcs_"):
                return token
            return None
    return None
