"""Session stores: where session metadata and history live."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit

from ..errors import ConfigError
from .base import (
    DROP_ALL,
    UNCHANGED,
    CommitResult,
    ExpiresAfter,
    ExpiryAnchor,
    HistoryWindow,
    IdempotentReply,
    Lease,
    MessagePage,
    NewSession,
    RestoredSession,
    SessionLimits,
    SessionRecord,
    SessionSnapshot,
    SessionStatus,
    Store,
    StoredMessage,
    TurnWrite,
    Unchanged,
)
from .memory import MemoryStore

__all__ = [
    "DROP_ALL",
    "UNCHANGED",
    "CommitResult",
    "ExpiresAfter",
    "ExpiryAnchor",
    "HistoryWindow",
    "IdempotentReply",
    "Lease",
    "MemoryStore",
    "MessagePage",
    "NewSession",
    "RestoredSession",
    "SessionLimits",
    "SessionRecord",
    "SessionSnapshot",
    "SessionStatus",
    "Store",
    "StoredMessage",
    "TurnWrite",
    "Unchanged",
    "store_from_url",
]


def store_from_url(
    url: str,
    *,
    ttl: float | None,
    clock: Callable[[], float] = time.time,
    key_prefix: str = "sp",
    timeout: float = 5.0,
    max_sessions_per_owner: int = 0,
    memory_max_sessions: int = 0,
) -> Store:
    """The store a ``--store`` URL names: ``memory://``, ``redis://``, ``rediss://``, ``unix://``,
    ``redis+cluster://host:port[,host:port...]`` or ``redis+sentinel://host:port[,...]/service[/db]``.

    ``ttl`` is the inactivity TTL in seconds (None: never expire); ``timeout`` how long
    a Redis command may go unanswered before it fails. ``max_sessions_per_owner`` caps each
    owner's sessions, ``memory_max_sessions`` all of a memory store's (evicting the longest
    idle); 0: no cap. Nothing connects here; call ``open()``. Raises ConfigError for an
    unknown scheme or a bad URL.
    """
    scheme = urlsplit(url).scheme.lower()
    if ttl is not None and ttl <= 0:
        raise ConfigError(f"store: ttl must be a positive number of seconds or None, not {ttl!r}")
    if not timeout > 0:
        raise ConfigError(f"store: timeout must be a positive number of seconds, not {timeout!r}")
    if scheme == "memory":
        return MemoryStore(
            ttl=ttl, clock=clock, max_sessions_per_owner=max_sessions_per_owner, max_sessions=memory_max_sessions
        )
    if scheme in ("redis", "rediss", "unix", "redis+cluster", "redis+sentinel"):
        # Imported here so that running with memory:// never imports redis.
        from .redis import RedisStore

        try:
            return RedisStore(
                url,
                ttl=ttl,
                clock=clock,
                key_prefix=key_prefix,
                timeout=timeout,
                max_sessions_per_owner=max_sessions_per_owner,
            )
        except ValueError as exc:
            raise ConfigError(f"store: invalid {scheme} URL: {exc}") from exc
    raise ConfigError(f"store: unknown scheme {scheme!r} (use memory:// or redis://...)")
