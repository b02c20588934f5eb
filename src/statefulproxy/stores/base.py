"""The session store interface, and the records it traffics in.

A store keeps, per (scope, session id): one metadata record and an ordered list of
messages. Each stored message is two JSON documents: ``replay`` (the minimal message
that is sent upstream, see ``messages.minimal``) and ``info`` (what the proxy keeps
beside it: id, created_at, reasoning, usage, ...). Keeping them apart lets the hot
path splice ``replay`` bytes into the outgoing body without parsing them.

``scope`` is always a keyed hash of the caller's credential, never the credential.
Stores build their keys from hashes of (scope, session id), never from raw strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

SessionStatus = Literal["active", "ended", "expired"]

# drop_leading value meaning "drop the whole stored history"
DROP_ALL = -1


@dataclass(frozen=True, slots=True)
class StoredMessage:
    replay: bytes  # orjson bytes of the minimal replayable message
    info: bytes  # orjson bytes of {"id", "created_at", ...}: never sent upstream


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """What the chat hot path needs: one store round trip."""

    id: str
    status: SessionStatus
    replay: list[bytes]  # replay bytes of every stored message, oldest first
    leading_system: int  # how many leading messages are system/developer


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session's metadata, as the management API shows it."""

    id: str
    status: SessionStatus
    title: str | None
    message_count: int
    created_at: int
    last_active_at: int
    expires_at: int | None
    metadata: dict[str, str] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NewSession:
    """Fields for a session that a turn (or POST /v1/sessions) creates."""

    title: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    expires_at: int | None = None


@dataclass(frozen=True, slots=True)
class TurnWrite:
    """One atomic change to a session's history.

    The history becomes ``head + stored[drop_leading:] + tail`` (``DROP_ALL`` drops all
    of it). ``head`` is only ever system/developer messages. ``tail_leading_system`` is
    how many leading messages of ``tail`` are system/developer, so the store can keep
    ``leading_system`` true without parsing.
    """

    head: Sequence[StoredMessage]
    tail: Sequence[StoredMessage]
    drop_leading: int = 0
    tail_leading_system: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    title_hint: str | None = None  # set as title if the session has none
    create: NewSession | None = None  # create the session if it does not exist


CommitResult = Literal["ok", "missing", "ended", "expired"]


class Store(Protocol):
    """What every session store implements. All methods raise StoreError on failure."""

    async def open(self) -> None:
        """Connect (or do nothing). Called once before use; idempotent."""

    async def aclose(self) -> None:
        """Release connections. Idempotent."""

    async def ping(self) -> bool:
        """True when the store answers."""

    async def scope_secret(self) -> bytes:
        """A random secret shared by every proxy using this store, made on first use.

        Keys the credential hash when no ``scope_secret`` is configured.
        """

    async def load(self, scope: str, session_id: str) -> SessionSnapshot | None:
        """The session's status and replay history; None if it does not exist.

        Refreshes the inactivity TTL of an active session.
        """

    async def commit(self, scope: str, session_id: str, write: TurnWrite) -> CommitResult:
        """Apply ``write`` atomically, or nothing.

        - session absent: create it from ``write.create`` and apply; "missing" if
          ``write.create`` is None (it was deleted meanwhile: never resurrect it).
        - session ended / expired: change nothing, return "ended" / "expired".
        Updates last_active_at, message_count, usage, and the inactivity TTL.
        """

    async def create(self, scope: str, session_id: str, new: NewSession) -> SessionRecord | None:
        """Create an empty session; None if the id is taken."""

    async def get(self, scope: str, session_id: str) -> SessionRecord | None: ...

    async def messages(self, scope: str, session_id: str) -> list[StoredMessage] | None:
        """The whole history, oldest first; None if the session does not exist."""

    async def end(self, scope: str, session_id: str) -> SessionRecord | None:
        """Mark it ended (read-only). None if it does not exist."""

    async def delete(self, scope: str, session_id: str) -> bool:
        """Delete it and all its messages. False if it did not exist."""


def record_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """Keys of SessionRecord, for stores that keep it as a mapping."""
    return {k: meta[k] for k in SessionRecord.__slots__ if k in meta}
