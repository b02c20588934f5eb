"""The session store interface, and the records it traffics in.

A store keeps, per (owner, session id): one metadata record and an ordered list of
messages. Each stored message is two JSON documents: ``replay`` (the minimal message
that is sent upstream, see ``messages.minimal``) and ``info`` (what the proxy keeps
beside it: id, created_at, reasoning, usage, ...). Keeping them apart lets the hot
path splice ``replay`` bytes into the outgoing body without parsing them.

``owner`` is always a keyed hash of the caller's credential, never the credential.
Stores build their keys from hashes of (owner, session id), never from raw strings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Literal, Protocol

SessionStatus = Literal["active", "ended", "expired"]

# drop_leading value meaning "drop the whole stored history"
DROP_ALL = -1

# A session's own history window: (max_messages, max_tokens), each >= 0, 0 meaning no limit.
HistoryWindow = tuple[int, int]


class Unchanged(Enum):
    """The type of ``UNCHANGED``: an ``update`` argument that leaves a field as it is."""

    UNCHANGED = "unchanged"


# ``update(history_window=UNCHANGED)`` keeps the window, ``history_window=None`` removes it
UNCHANGED: Final = Unchanged.UNCHANGED


def check_window(window: HistoryWindow | None) -> None:
    """Raise ValueError unless ``window`` is None or two ints >= 0."""
    if window is not None and not (len(window) == 2 and all(type(n) is int and n >= 0 for n in window)):
        raise ValueError(f"a history window is (max_messages, max_tokens), ints >= 0, not {window!r}")


@dataclass(slots=True)  # not frozen: built on every turn, and a frozen one pays a setattr per field
class StoredMessage:
    replay: bytes  # orjson bytes of the minimal replayable message
    info: bytes  # orjson bytes of {"id", "created_at", ...}: never sent upstream


ExpiryAnchor = Literal["created_at", "last_active_at"]


@dataclass(frozen=True, slots=True)
class ExpiresAfter:
    """An absolute expiry: the session becomes ``expired`` ``seconds`` after ``anchor``."""

    anchor: ExpiryAnchor
    seconds: int


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Request limits of one session, counted by the store at each chat request."""

    max_requests_per_1_minute: int | None = None  # sliding 60-second window
    max_requests: int | None = None  # over the session's lifetime


@dataclass(slots=True)  # not frozen: built on every turn, and a frozen one pays a setattr per field
class SessionSnapshot:
    """What the chat hot path needs: one store round trip."""

    id: str
    status: SessionStatus
    replay: list[bytes]  # replay bytes of every stored message, oldest first
    leading_system: int  # how many leading messages are system/developer
    # set when a limit refused this request (nothing was counted): seconds to wait
    retry_after: int | None = None
    limited_by: Literal["max_requests_per_1_minute", "max_requests"] | None = None
    # set when the load's idempotency key names a recorded turn: its value, and nothing else
    # was done (no history, nothing counted, no lease taken)
    idempotent: bytes | None = None
    # the session's own history window (max_messages, max_tokens), if it has one
    window: HistoryWindow | None = None
    # the info documents of the same messages, read only when asked for (most turns never do)
    info: Callable[[], list[bytes]] = field(default=list, compare=False)


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
    expires_after: ExpiresAfter | None = None
    limits: SessionLimits = field(default_factory=SessionLimits)
    request_count: int = 0  # chat requests counted against max_requests
    history_window: HistoryWindow | None = None
    namespace: str | None = None  # the path prefix it was created under, e.g. "/document/d1"


@dataclass(frozen=True, slots=True)
class RestoredSession:
    """A whole session to write back as it was (an import): ``record``'s fields, ``messages`` its history.

    ``record.message_count`` is ``len(messages)``; ``leading_system`` counts the leading
    system/developer messages. An ``expired`` status is not stored: it follows from ``expires_at``.
    """

    record: SessionRecord
    messages: Sequence[StoredMessage]
    leading_system: int = 0


@dataclass(frozen=True, slots=True)
class NewSession:
    """Fields for a session that a turn (or POST /v1/sessions, or a fork) creates."""

    title: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    expires_after: ExpiresAfter | None = None  # expires_at = anchor time + seconds
    limits: SessionLimits = field(default_factory=SessionLimits)
    history_window: HistoryWindow | None = None
    namespace: str | None = None  # None or "": none
    request_count: int = 0  # 1 for a session a chat turn creates: that turn is its first request

    def __post_init__(self) -> None:
        check_window(self.history_window)


@dataclass(frozen=True, slots=True)
class IdempotentReply:
    """What a turn keeps under its ``Idempotency-Key`` for ``ttl_ms``: opaque to the store."""

    key: str  # a hash of the client's key, never the key itself
    value: bytes
    ttl_ms: int


@dataclass(slots=True)  # not frozen: built on every turn, and a frozen one pays a setattr per field
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
    lease_token: str | None = None  # released by the commit, in the same atomic step, if still held
    idempotent: IdempotentReply | None = None  # kept with the turn when it is written


@dataclass(slots=True)  # not frozen: built on every turn, and a frozen one pays a setattr per field
class Lease:
    """One turn's hold on a session: only the holder of ``token`` may commit a turn or renew it."""

    token: str
    ttl_ms: int


# "limited": the session did not exist and its owner is at the store's max_sessions_per_owner
CommitResult = Literal["ok", "missing", "ended", "expired", "limited"]


@dataclass(frozen=True, slots=True)
class MessagePage:
    """Some of a session's messages, oldest first, and how many the whole history holds."""

    messages: list[StoredMessage]
    total: int


class Store(Protocol):
    """What every session store implements. All methods raise StoreError on failure."""

    async def open(self) -> None:
        """Connect (or do nothing). Called once before use; idempotent."""

    async def aclose(self) -> None:
        """Release connections. Idempotent."""

    async def ping(self) -> bool:
        """True when the store answers."""

    async def owner_secret(self) -> bytes:
        """A random secret shared by every proxy using this store, made on first use.

        Keys the credential hash when no ``scope_secret`` is configured. The first writer's
        secret wins and every other proxy adopts it; a shared store re-reads it now and then
        (cheaply), so a proxy never keeps a secret the store no longer holds.
        """

    async def load(
        self, owner: str, session_id: str, lease: Lease | None = None, idempotency_key: str | None = None
    ) -> SessionSnapshot | None:
        """The session's status, replay history and history window; None if it does not exist.

        With ``idempotency_key``, a live reply a committed turn kept under that key (see
        ``TurnWrite.idempotent``) is returned in ``idempotent`` first, lease or not, and
        nothing else is done or read.

        For an active session this is also the chat request's admission, atomically: if a
        limit refuses it, the snapshot says so in ``retry_after`` / ``limited_by`` and
        nothing is counted; otherwise the request is counted (sliding one-minute window,
        lifetime count) and the inactivity TTL refreshed.

        With ``lease``, the same step takes the session's lease for ``lease.ttl_ms`` (also for
        a session that does not exist yet, so two first turns on one new id are serialised):
        if another token holds it, raises SessionBusy and counts nothing. A lease is not taken
        for an ended/expired session nor when a limit refuses the request.

        With ``lease``, a session that does not exist and whose owner already has the store's
        ``max_sessions_per_owner`` sessions raises ClientError 429 ``session_limit_reached``
        (with Retry-After): the turn would create one more. Nothing is taken or counted.
        """

    async def commit(self, owner: str, session_id: str, write: TurnWrite) -> CommitResult:
        """Apply ``write`` atomically, or nothing.

        - session absent: create it from ``write.create`` and apply; "missing" if
          ``write.create`` is None (it was deleted meanwhile: never resurrect it).
        - session ended / expired: change nothing, return "ended" / "expired".
        - session absent and its owner at ``max_sessions_per_owner``: change nothing, "limited".
        Updates last_active_at, message_count, usage, the inactivity TTL, and expires_at
        when the session expires relative to its last activity. A session created here is
        listed in the owner's index. ``write.idempotent`` is kept only when the turn is written
        ("ok"), replacing a reply kept under the same key; expired ones are dropped.
        """

    async def create(
        self,
        owner: str,
        session_id: str,
        new: NewSession,
        messages: Sequence[StoredMessage] = (),
        leading_system: int = 0,
    ) -> SessionRecord | None:
        """Create a session, empty or holding ``messages`` (a fork); None if the id is taken.

        Sets the title from ``new.title`` only (no hint), and lists it in the owner's index.
        Raises ClientError 429 ``session_limit_reached`` (nothing written) when the owner
        already has ``max_sessions_per_owner`` sessions.
        """

    async def restore(self, owner: str, restored: RestoredSession, *, replace: bool = False) -> bool:
        """Write ``restored`` under its id, atomically (a half-written session is never seen); False
        if the id is taken, unless ``replace``: then the session there is replaced.

        Every field of the record is kept (created_at, last_active_at, request_count, usage, ...);
        the inactivity TTL starts afresh, and no lease, rate window or kept reply comes with it. It
        is listed as the owner's newest session. Raises ClientError 429 ``session_limit_reached``
        (nothing written) when a new session would take the owner past ``max_sessions_per_owner``.
        """

    async def get(self, owner: str, session_id: str) -> SessionRecord | None: ...

    async def list_sessions(
        self,
        owner: str,
        *,
        limit: int,
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
        before: str | None = None,
        status: SessionStatus | None = None,
        metadata: dict[str, str] | None = None,
        namespace: str | None = None,
    ) -> tuple[list[SessionRecord], bool] | None:
        """One page of the owner's sessions in creation order, and whether more follow.

        Reads the owner's index (never a key scan); index entries whose session is gone
        are dropped from it on the way. ``after``/``before`` are session ids (exclusive
        cursors, in the listing's order); filters apply before ``limit``. ``namespace``
        keeps only the sessions created in it ("": those created in none; None: all). None
        when a cursor names no session of the index, or, with ``namespace``, a session of
        another namespace.
        """

    async def update(
        self,
        owner: str,
        session_id: str,
        *,
        title: str | None = None,
        metadata: dict[str, str] | None = None,
        history_window: HistoryWindow | Unchanged | None = UNCHANGED,
    ) -> SessionRecord | None:
        """Set the title and/or replace the metadata (None: leave as is), and set the history
        window (None: remove it; UNCHANGED: leave it); None if the session does not exist."""

    async def messages(self, owner: str, session_id: str) -> list[StoredMessage] | None:
        """The whole history, oldest first; None if the session does not exist."""

    async def messages_page(self, owner: str, session_id: str, start: int, stop: int | None) -> MessagePage | None:
        """``history[start:stop]`` (Python slice bounds: a negative one counts from the end, a
        None stop is the end) and the history's length, in one atomic read of only that range;
        None if the session does not exist."""

    async def message_positions(
        self, owner: str, session_id: str, message_ids: Sequence[str]
    ) -> tuple[list[int | None], int] | None:
        """Where each message id is in the history (None: not in it), and the history's length;
        None if the session does not exist. Found in an index of the ids, without reading the
        history. An id is the ``id`` an info document starts with (``{"id":"..."``)."""

    async def clear(self, owner: str, session_id: str) -> SessionRecord | None:
        """Remove every message and kept reply, keep the session (title, usage, ...). None if absent."""

    async def end(self, owner: str, session_id: str) -> SessionRecord | None:
        """Mark it ended (read-only). None if it does not exist."""

    async def delete(self, owner: str, session_id: str) -> bool:
        """Delete it, its messages, its kept replies and its index entry. False if it did not exist."""

    async def renew_lease(self, owner: str, session_id: str, lease: Lease) -> bool:
        """Extend the lease by ``lease.ttl_ms`` if ``lease.token`` still holds it; False if not."""

    async def release_lease(self, owner: str, session_id: str, token: str) -> None:
        """Drop the lease if ``token`` holds it (a turn that ends without a commit)."""

    async def put_client_secret(
        self, secret_hash: str, owner: str, session_id: str, ttl: float, grant: bytes = b""
    ) -> None:
        """Remember that ``secret_hash`` opens ``session_id`` of ``owner``, for ``ttl`` seconds, with
        ``grant``: opaque bytes kept as they are, for the caller."""

    async def client_secret(self, secret_hash: str) -> tuple[str, str, bytes] | None:
        """(owner, session id, grant) a live secret opens; None if unknown or expired. A record
        written without a grant reads as b""."""
