"""An in-process session store: plain dicts, for one proxy process and for tests.

Every method runs without awaiting inside, so under asyncio each one is atomic: two
concurrent commits to one session apply one after the other, never interleaved.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .base import (
    DROP_ALL,
    CommitResult,
    NewSession,
    SessionRecord,
    SessionSnapshot,
    SessionStatus,
    StoredMessage,
    TurnWrite,
)

# An occasional sweep drops dead sessions nobody asks for again; at most this often.
_MAX_SWEEP_INTERVAL = 60.0


@dataclass(slots=True)
class _Session:
    created_at: int
    last_active_at: int
    expires_at: int | None
    title: str | None
    metadata: dict[str, str]
    deadline: float  # clock() value after which the idle session is gone
    ended: bool = False
    leading_system: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    messages: list[StoredMessage] = field(default_factory=list)

    def status(self, now: float) -> SessionStatus:
        if self.ended:
            return "ended"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def record(self, session_id: str, now: float) -> SessionRecord:
        return SessionRecord(
            id=session_id,
            status=self.status(now),
            title=self.title,
            message_count=len(self.messages),
            created_at=self.created_at,
            last_active_at=self.last_active_at,
            expires_at=self.expires_at,
            metadata=dict(self.metadata),
            usage=dict(self.usage),
        )


class MemoryStore:
    """Sessions in a dict, gone when the process exits.

    ``ttl`` is the inactivity TTL in seconds (None: sessions never expire); ``clock``
    returns unix seconds and is injectable for tests.
    """

    def __init__(self, *, ttl: float | None = None, clock: Callable[[], float] = time.time) -> None:
        self._ttl = ttl
        self._clock = clock
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._secret = os.urandom(32)
        self._sweep_interval = math.inf if ttl is None else min(ttl / 10, _MAX_SWEEP_INTERVAL)
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

    async def scope_secret(self) -> bytes:
        return self._secret

    async def load(self, scope: str, session_id: str) -> SessionSnapshot | None:
        now = self._clock()
        session = self._lookup(scope, session_id, now)
        if session is None:
            return None
        status = session.status(now)
        if status == "active":
            session.deadline = self._deadline(now)
        return SessionSnapshot(
            id=session_id,
            status=status,
            replay=[message.replay for message in session.messages],
            leading_system=session.leading_system,
        )

    async def commit(self, scope: str, session_id: str, write: TurnWrite) -> CommitResult:
        now = self._clock()
        session = self._lookup(scope, session_id, now)
        if session is None:
            if write.create is None:
                return "missing"
            session = self._new_session(write.create, now)
            self._sessions[scope, session_id] = session
        else:
            status = session.status(now)
            if status != "active":
                return status

        stored = session.messages
        drop = len(stored) if write.drop_leading == DROP_ALL else min(write.drop_leading, len(stored))
        rest_len = len(stored) - drop
        rest_lead = max(session.leading_system - drop, 0)
        session.leading_system = (
            len(write.head) + rest_lead + (write.tail_leading_system if rest_lead == rest_len else 0)
        )
        if drop or write.head:
            session.messages = [*write.head, *stored[drop:], *write.tail]
        else:
            stored.extend(write.tail)  # the common turn: append without copying the history
        for name, tokens in write.usage.items():
            session.usage[name] = session.usage.get(name, 0) + tokens
        if session.title is None:
            session.title = write.title_hint
        session.last_active_at = int(now)
        session.deadline = self._deadline(now)
        return "ok"

    async def create(self, scope: str, session_id: str, new: NewSession) -> SessionRecord | None:
        now = self._clock()
        if self._lookup(scope, session_id, now) is not None:
            return None
        session = self._new_session(new, now)
        self._sessions[scope, session_id] = session
        return session.record(session_id, now)

    async def get(self, scope: str, session_id: str) -> SessionRecord | None:
        now = self._clock()
        session = self._lookup(scope, session_id, now)
        return None if session is None else session.record(session_id, now)

    async def messages(self, scope: str, session_id: str) -> list[StoredMessage] | None:
        session = self._lookup(scope, session_id, self._clock())
        return None if session is None else list(session.messages)

    async def end(self, scope: str, session_id: str) -> SessionRecord | None:
        now = self._clock()
        session = self._lookup(scope, session_id, now)
        if session is None:
            return None
        session.ended = True
        return session.record(session_id, now)

    async def delete(self, scope: str, session_id: str) -> bool:
        now = self._clock()
        if self._lookup(scope, session_id, now) is None:
            return False
        del self._sessions[scope, session_id]
        return True

    def _new_session(self, new: NewSession, now: float) -> _Session:
        return _Session(
            created_at=int(now),
            last_active_at=int(now),
            expires_at=new.expires_at,
            title=new.title or None,
            metadata=dict(new.metadata),
            deadline=self._deadline(now),
        )

    def _deadline(self, now: float) -> float:
        return math.inf if self._ttl is None else now + self._ttl

    def _lookup(self, scope: str, session_id: str, now: float) -> _Session | None:
        """The live session, dropping it if it has been idle past the TTL."""
        self._maybe_sweep(now)
        session = self._sessions.get((scope, session_id))
        if session is not None and now > session.deadline:
            del self._sessions[scope, session_id]
            return None
        return session

    def _maybe_sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_interval
        dead = [key for key, session in self._sessions.items() if now > session.deadline]
        for key in dead:
            del self._sessions[key]
