"""``Idempotency-Key``: a repeated turn gets the reply its first attempt recorded (sans-I/O).

As the IETF draft (draft-ietf-httpapi-idempotency-key-header) has it: a key is the
caller's, scoped here to its credential and session; the same key with another request
body is refused (422); a request while the first is in flight waits for it (the session
lease), then gets its reply. Only a recorded turn keeps its reply: a failed one may be
tried again. The key never reaches a store or a log, only a hash of it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import ClientError
from ..types import Headers
from .identity import MINTED_PREFIX

HEADER = b"idempotency-key"
MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    hashed: str  # what the store files the reply under
    fingerprint: bytes  # of the request body: the same key with another body is refused

    def keep(self, message: bytes) -> bytes:
        """The value a store keeps for the turn whose assistant message is ``message`` (compact JSON)."""
        return self.fingerprint + b"\n" + message

    def reply(self, kept: bytes) -> dict[str, Any]:
        """The assistant message of a kept value; 422 if it was kept for another request body."""
        fingerprint, _, message = kept.partition(b"\n")
        if fingerprint != self.fingerprint:
            raise ClientError(
                422,
                "This Idempotency-Key was used with a different request body.",
                param="Idempotency-Key",
                code="idempotency_key_reused",
            )
        parsed: dict[str, Any] = orjson.loads(message)
        return parsed

    def session_id(self, owner: str) -> str:
        """The id a session created by this request gets when the client names none.

        Derived, not random, so that a retry of a first turn finds the session its first
        attempt created; only this credential can open it.
        """
        digest = hashlib.blake2b(f"{owner}\0{self.hashed}".encode(), digest_size=16).hexdigest()
        return MINTED_PREFIX + digest


def idempotency_key(headers: Headers, body: bytes) -> IdempotencyKey | None:
    """The request's key, if it has one; 400 for a key that is empty, too long, not ASCII or repeated."""
    found: bytes | None = None
    for name, value in headers:
        if name.lower() == HEADER:
            if found is not None:
                raise _invalid("Idempotency-Key must be sent once.")
            found = value
    if found is None:
        return None
    key = found.strip()
    if not 0 < len(key) <= MAX_KEY_LENGTH or not all(0x20 <= byte < 0x7F for byte in key):
        raise _invalid(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.")
    return IdempotencyKey(
        hashed=hashlib.blake2b(key, digest_size=16).hexdigest(),
        fingerprint=hashlib.blake2b(body, digest_size=16).hexdigest().encode(),
    )


def _invalid(message: str) -> ClientError:
    return ClientError(400, message, param="Idempotency-Key", code="invalid_idempotency_key")
