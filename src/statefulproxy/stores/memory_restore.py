"""Writing a whole session back into the memory store as it was: ``MemoryStore.restore`` (an import)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .base import NewSession, RestoredSession
from .memory_session import MemorySession


class MemoryStoreParts(Protocol):
    """The memory store's own bookkeeping that a restore goes through (stores/memory.py)."""

    _clock: Callable[[], float]

    def _lookup(self, owner: str, session_id: str, now: float) -> MemorySession | None: ...

    def _forget(self, owner: str, session_id: str) -> None: ...

    def _check_room(self, owner: str, now: float) -> None: ...

    def _add(self, owner: str, session_id: str, new: NewSession, now: float) -> MemorySession: ...


def restore(store: MemoryStoreParts, owner: str, restored: RestoredSession, replace: bool) -> bool:
    """Store.restore. Nothing here awaits, so under asyncio no other call sees it half done."""
    record, now = restored.record, store._clock()
    if store._lookup(owner, record.id, now) is None:
        store._check_room(owner, now)
    elif replace:
        store._forget(owner, record.id)
    else:
        return False
    new = NewSession(
        metadata=record.metadata,
        expires_after=record.expires_after,
        limits=record.limits,
        history_window=record.history_window,
        namespace=record.namespace,
    )
    session = store._add(owner, record.id, new, now)
    session.title = record.title
    session.created_at = record.created_at
    session.last_active_at = record.last_active_at
    session.ended = record.status == "ended"
    session.request_count = record.request_count
    session.usage = dict(record.usage)
    session.set_history(restored.messages, restored.leading_system)
    return True
