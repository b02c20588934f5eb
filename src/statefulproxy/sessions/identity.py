"""Who a request belongs to: its session id and its owner (a keyed hash of its credential).

Pure functions over the parsed body and the ASGI header list.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

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


def credential(headers: Headers) -> bytes | None:
    """The caller's credential: Authorization bearer token, else x-api-key, else api-key."""
    bearer = api_key = azure_key = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                bearer = token.strip()
        elif lowered == b"x-api-key":
            api_key = value
        elif lowered == b"api-key":
            azure_key = value
    return bearer or api_key or azure_key or None


def owner_of(credential: bytes | None, secret: bytes) -> str:
    """The owner of a credential: a keyed hash of it; the credential itself is never kept."""
    message = b"anonymous" if credential is None else b"key:" + credential
    return hmac.digest(secret, message, hashlib.sha256).hex()[:32]


CLIENT_SECRET_PREFIX = "spcs_"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a client secret opens: one session of one owner."""

    owner: str
    session_id: str


def mint_client_secret() -> str:
    return CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32)  # 256 random bits


def client_secret_hash(token: bytes) -> str:
    """What is stored of a client secret: it is shown once and never kept."""
    return hashlib.sha256(token).hexdigest()


def client_secret_of(headers: Headers) -> bytes | None:
    """The bearer token when it is a session client secret (``spcs_...``), else None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.partition(b" ")
            token = token.strip()
            if scheme.lower() == b"bearer" and token.startswith(b"spcs_"):
                return token
            return None
    return None
