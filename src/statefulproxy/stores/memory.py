"""An in-process session store: plain dicts, for one proxy process and for tests.

Every method runs without awaiting inside, so under asyncio each one is atomic: two
concurrent commits to one session apply one after the other, never interleaved.

Storage is capped twice: per owner (``max_sessions_per_owner``: creating one more is
refused) and in all (``max_sessions``: the session idle the longest is evicted to make room).
Sessions are kept in order of last activity (a turn's load or commit), so both the eviction
and the refresh are O(1).
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Literal

from ..errors import SessionBusy
from . import memory_restore
from .base import (
    UNCHANGED,
    CommitResult,
    HistoryWindow,
    Lease,
    MessagePage,
    NewSession,
    RestoredSession,
    SessionRecord,
    SessionSnapshot,
    SessionStatus,
    StoredMessage,
    TurnWrite,
    Unchanged,
    check_window,
)
from .limits import NO_EXPIRY_RETRY, session_limit_error
from .memory_session import MemoryLeases, MemorySession, check_ttl

# An occasional sweep drops dead sessions nobody asks for again; at most this often.
_MAX_SWEEP_INTERVAL = 60.0


class MemoryStore:
    """Sessions in a dict, gone when the process exits.

    ``ttl`` is the inactivity TTL in seconds (None: sessions never expire); ``clock``
    returns unix seconds and is injectable for tests. ``max_sessions_per_owner`` caps each
    owner's sessions and ``max_sessions`` all of them (0: no cap); ``evictions`` counts the
    live sessions evicted to stay under ``max_sessions``.

    ``update`` changes ended and expired sessions too (title and metadata are management
    data); ``clear`` changes only active ones. Neither refreshes the inactivity TTL. Every
    admitted ``load`` of an active session counts in ``request_count``, limits or not; a
    refused one changes nothing (not even the TTL) and carries no history.
    """

    def __init__(
        self,
        *,
        ttl: float | None = None,
        clock: Callable[[], float] = time.time,
        max_sessions_per_owner: int = 0,
        max_sessions: int = 0,
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._owner_cap = max_sessions_per_owner
        self._max_sessions = max_sessions
        self.evictions = 0
        # least recently active first: a turn's load and commit move its session to the end
        self._sessions: OrderedDict[tuple[str, str], MemorySession] = OrderedDict()
        # per owner, its session ids in creation order (dicts keep insertion order)
        self._index: dict[str, dict[str, None]] = {}
        self._secrets: dict[str, tuple[str, str, float, bytes]] = {}
        # apart from the sessions: a lease may precede one, and delete() leaves it
        self._leases = MemoryLeases()
        self._secret = os.urandom(32)
        # without a TTL only secrets and leases expire, but they must not pile up either
        self._sweep_interval = _MAX_SWEEP_INTERVAL if ttl is None else min(ttl / 10, _MAX_SWEEP_INTERVAL)
        self._next_sweep = clock() + self._sweep_interval

    def __len__(self) -> int:
        """Sessions held, including idle ones the next sweep will drop."""
        return len(self._sessions)

    async def open(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def ping(self) -> bool:
        return True

    async def owner_secret(self) -> bytes:
        return self._secret

    async def load(
        self, owner: str, session_id: str, lease: Lease | None = None, idempotency_key: str | None = None
    ) -> SessionSnapshot | None:
        now = self._clock()
        if lease is not None:
            check_ttl(lease)
        session = self._lookup(owner, session_id, now)
        if session is not None and idempotency_key is not None:
            kept = session.kept_reply(idempotency_key, now)
            if kept is not None:
                return SessionSnapshot(session_id, session.status(now), [], 0, idempotent=kept)
        if lease is not None and self._leases.holder((owner, session_id), now) not in (None, lease.token):
            raise SessionBusy(f"session {session_id!r} is busy: another turn holds its lease")
        if session is None:
            if lease is not None:  # a first turn: the next one on this id waits for it
                self._check_room(owner, now)
                self._leases.take((owner, session_id), lease, now)
            return None
        status = session.status(now)
        if status == "active":
            refused = session.admit(now)
            if refused is not None:  # over a limit: the history is not needed
                return SessionSnapshot(session_id, status, [], 0, *refused)
            session.deadline = self._deadline(now)
            self._sessions.move_to_end((owner, session_id))
            if lease is not None:
                self._leases.take((owner, session_id), lease, now)
        messages = session.messages
        count = len(messages)  # the list grows in place with the next commit: the snapshot stops here
        return SessionSnapshot(
            id=session_id,
            status=status,
            replay=[message.replay for message in messages],
            leading_system=session.leading_system,
            window=session.history_window,
            info=lambda: [message.info for message in messages[:count]],
        )

    async def commit(self, owner: str, session_id: str, write: TurnWrite) -> CommitResult:
        now = self._clock()
        if write.lease_token is not None:  # whatever the result: in one step with the write, nothing awaits
            self._leases.release((owner, session_id), write.lease_token, now)
        session = self._lookup(owner, session_id, now)
        if session is None:
            if write.create is None:
                return "missing"
            if self._no_room(owner, now) is not None:
                return "limited"
            session = self._add(owner, session_id, write.create, now)
        else:
            status = session.status(now)
            if status != "active":
                return status
            self._sessions.move_to_end((owner, session_id))

        session.splice(write)
        for name, tokens in write.usage.items():
            session.usage[name] = session.usage.get(name, 0) + tokens
        if session.title is None:
            session.title = write.title_hint
        session.last_active_at = int(now)
        session.deadline = self._deadline(now)
        if write.idempotent is not None:
            session.keep(write.idempotent, now)
        return "ok"

    async def create(
        self,
        owner: str,
        session_id: str,
        new: NewSession,
        messages: Sequence[StoredMessage] = (),
        leading_system: int = 0,
    ) -> SessionRecord | None:
        now = self._clock()
        if self._lookup(owner, session_id, now) is not None:
            return None
        self._check_room(owner, now)
        session = self._add(owner, session_id, new, now)
        session.set_history(messages, leading_system)
        return session.record(session_id, now)

    async def restore(self, owner: str, restored: RestoredSession, *, replace: bool = False) -> bool:
        return memory_restore.restore(self, owner, restored, replace)

    async def get(self, owner: str, session_id: str) -> SessionRecord | None:
        now = self._clock()
        session = self._lookup(owner, session_id, now)
        return None if session is None else session.record(session_id, now)

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
        if limit < 1:
            raise ValueError("limit must be at least 1")
        now = self._clock()
        self._maybe_sweep(now)
        ids = list(self._index.get(owner, ()))
        if order == "desc":
            ids.reverse()
        for cursor in (after, before):
            if cursor is not None and (cursor not in ids or not self._in(namespace, owner, cursor, now)):
                return None
        start = 0 if after is None else ids.index(after) + 1
        candidates = ids[start : len(ids) if before is None else ids.index(before)]
        backwards = before is not None and after is None  # walk from `before` towards the start
        if backwards:
            candidates.reverse()
        found: list[SessionRecord] = []
        for session_id in candidates:
            session = self._lookup(owner, session_id, now)
            if session is None:
                continue
            record = session.listed(session_id, now, status, metadata, namespace)
            if record is None:
                continue
            found.append(record)
            if len(found) > limit:
                break
        page = found[:limit]
        if backwards:
            page.reverse()
        return page, len(found) > limit

    async def update(
        self,
        owner: str,
        session_id: str,
        *,
        title: str | None = None,
        metadata: dict[str, str] | None = None,
        history_window: HistoryWindow | Unchanged | None = UNCHANGED,
    ) -> SessionRecord | None:
        if not isinstance(history_window, Unchanged):
            check_window(history_window)
        now = self._clock()
        session = self._lookup(owner, session_id, now)
        if session is None:
            return None
        if title is not None:
            session.title = title
        if metadata is not None:
            session.metadata = dict(metadata)
        if not isinstance(history_window, Unchanged):
            session.history_window = history_window
        return session.record(session_id, now)

    async def messages(self, owner: str, session_id: str) -> list[StoredMessage] | None:
        session = self._lookup(owner, session_id, self._clock())
        return None if session is None else list(session.messages)

    async def messages_page(self, owner: str, session_id: str, start: int, stop: int | None) -> MessagePage | None:
        session = self._lookup(owner, session_id, self._clock())
        return None if session is None else MessagePage(session.messages[start:stop], len(session.messages))

    async def message_positions(
        self, owner: str, session_id: str, message_ids: Sequence[str]
    ) -> tuple[list[int | None], int] | None:
        session = self._lookup(owner, session_id, self._clock())
        if session is None:
            return None
        return [session.position(wanted.encode()) for wanted in message_ids], len(session.messages)

    async def clear(self, owner: str, session_id: str) -> SessionRecord | None:
        now = self._clock()
        session = self._lookup(owner, session_id, now)
        if session is None:
            return None
        if session.status(now) == "active":
            session.set_history((), 0)
            session.kept.clear()
        return session.record(session_id, now)

    async def end(self, owner: str, session_id: str) -> SessionRecord | None:
        now = self._clock()
        session = self._lookup(owner, session_id, now)
        if session is None:
            return None
        session.ended = True
        return session.record(session_id, now)

    async def delete(self, owner: str, session_id: str) -> bool:
        if self._lookup(owner, session_id, self._clock()) is None:
            return False
        self._forget(owner, session_id)
        return True

    async def renew_lease(self, owner: str, session_id: str, lease: Lease) -> bool:
        check_ttl(lease)
        now = self._clock()
        if self._leases.holder((owner, session_id), now) != lease.token:
            return False
        self._leases.take((owner, session_id), lease, now)
        return True

    async def release_lease(self, owner: str, session_id: str, token: str) -> None:
        self._leases.release((owner, session_id), token, self._clock())

    async def put_client_secret(
        self, secret_hash: str, owner: str, session_id: str, ttl: float, grant: bytes = b""
    ) -> None:
        self._secrets[secret_hash] = (owner, session_id, self._clock() + ttl, grant)

    async def client_secret(self, secret_hash: str) -> tuple[str, str, bytes] | None:
        now = self._clock()
        self._maybe_sweep(now)
        found = self._secrets.get(secret_hash)
        if found is None:
            return None
        owner, session_id, deadline, grant = found
        if now >= deadline:
            del self._secrets[secret_hash]
            return None
        return owner, session_id, grant

    def _check_room(self, owner: str, now: float) -> None:
        wait = self._no_room(owner, now)
        if wait is not None:
            raise session_limit_error(self._owner_cap, wait)

    def _no_room(self, owner: str, now: float) -> float | None:
        """None if ``owner`` may create one more session, else the seconds until its first one expires."""
        index = self._index.get(owner)
        if not self._owner_cap or index is None or len(index) < self._owner_cap:
            return None
        for session_id in list(index):  # dead sessions the sweep has not reached do not count
            self._lookup(owner, session_id, now)
        index = self._index.get(owner)
        if index is None or len(index) < self._owner_cap:
            return None
        first = min(self._sessions[owner, session_id].deadline for session_id in index)
        return NO_EXPIRY_RETRY if math.isinf(first) else first - now

    def _add(self, owner: str, session_id: str, new: NewSession, now: float) -> MemorySession:
        if self._max_sessions and len(self._sessions) >= self._max_sessions:
            (idle_owner, idle_id), idle = next(iter(self._sessions.items()))  # the longest idle
            if now <= idle.deadline:
                self.evictions += 1
            self._forget(idle_owner, idle_id)
        session = MemorySession(
            created_at=int(now),
            last_active_at=int(now),
            title=new.title or None,
            metadata=dict(new.metadata),
            deadline=self._deadline(now),
            expires_after=new.expires_after,
            request_count=new.request_count,
            limits=new.limits,
            history_window=new.history_window,
            namespace=new.namespace or None,
        )
        self._sessions[owner, session_id] = session
        self._index.setdefault(owner, {})[session_id] = None
        return session

    def _in(self, namespace: str | None, owner: str, session_id: str, now: float) -> bool:
        """Whether the session is in ``namespace`` (None: any); one that is gone is in none."""
        if namespace is None:
            return True
        session = self._sessions.get((owner, session_id))
        found = session.namespace if session is not None and now <= session.deadline else None
        return (found or "") == namespace

    def _forget(self, owner: str, session_id: str) -> None:
        del self._sessions[owner, session_id]
        index = self._index[owner]
        del index[session_id]
        if not index:
            del self._index[owner]

    def _deadline(self, now: float) -> float:
        return math.inf if self._ttl is None else now + self._ttl

    def _lookup(self, owner: str, session_id: str, now: float) -> MemorySession | None:
        """The live session, dropping it if it has been idle past the TTL."""
        self._maybe_sweep(now)
        session = self._sessions.get((owner, session_id))
        if session is not None and now > session.deadline:
            self._forget(owner, session_id)
            return None
        return session

    def _maybe_sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_interval
        for owner, session_id in [key for key, session in self._sessions.items() if now > session.deadline]:
            self._forget(owner, session_id)
        for secret_hash in [key for key, (_, _, deadline, _) in self._secrets.items() if now >= deadline]:
            del self._secrets[secret_hash]
        self._leases.sweep(now)
