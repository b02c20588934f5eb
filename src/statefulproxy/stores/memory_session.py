"""One session of the memory store (fields, status, record, request admission, history), and leases.

Besides the history the session keeps an index of its message ids: each id's ordinal, and the
ordinal of the first stored message, so that finding a message (a page's cursor) never scans
the history. Ordinals grow at the end and shrink at the front (a new system head).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .base import (
    DROP_ALL,
    ExpiresAfter,
    HistoryWindow,
    IdempotentReply,
    Lease,
    SessionLimits,
    SessionRecord,
    SessionStatus,
    StoredMessage,
    TurnWrite,
)

_WINDOW_MS = 60_000  # the sliding window of max_requests_per_1_minute
_NO_DEADLINE_RETRY = 86400  # retry_after of a capped session that never goes away

LimitedBy = Literal["max_requests_per_1_minute", "max_requests"]

_ID_START = b'{"id":"'


def message_id(info: bytes) -> bytes | None:
    """The id an info document starts with, None for one that starts otherwise."""
    if not info.startswith(_ID_START):
        return None
    end = info.find(b'"', len(_ID_START))
    return info[len(_ID_START) : end] if end > len(_ID_START) else None


@dataclass(slots=True)
class MemorySession:
    created_at: int
    last_active_at: int
    title: str | None
    metadata: dict[str, str]
    deadline: float  # clock() value after which the idle session is gone (inf: never)
    expires_after: ExpiresAfter | None = None
    limits: SessionLimits = field(default_factory=SessionLimits)
    history_window: HistoryWindow | None = None
    namespace: str | None = None  # never "": None stands for none
    ended: bool = False
    leading_system: int = 0
    request_count: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    messages: list[StoredMessage] = field(default_factory=list)
    window: deque[int] = field(default_factory=deque)  # ms of the requests admitted in the last minute
    kept: dict[str, tuple[float, bytes]] = field(default_factory=dict)  # idempotency key -> (deadline, value)
    ordinals: dict[bytes, int] = field(default_factory=dict)  # message id -> its ordinal
    first_ordinal: int = 0  # the ordinal of messages[0]

    @property
    def expires_at(self) -> int | None:
        # last_active_at moves only with a turn, so this is also "recomputed at every commit"
        after = self.expires_after
        if after is None:
            return None
        return (self.created_at if after.anchor == "created_at" else self.last_active_at) + after.seconds

    def status(self, now: float) -> SessionStatus:
        if self.ended:
            return "ended"
        expires_at = self.expires_at
        if expires_at is not None and now >= expires_at:
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
            expires_after=self.expires_after,
            limits=self.limits,
            request_count=self.request_count,
            history_window=self.history_window,
            namespace=self.namespace,
        )

    def listed(
        self,
        session_id: str,
        now: float,
        status: SessionStatus | None,
        metadata: dict[str, str] | None,
        namespace: str | None,
    ) -> SessionRecord | None:
        """The session's record if it passes a listing's filters (``namespace`` "": created in none)."""
        record = self.record(session_id, now)
        if status is not None and record.status != status:
            return None
        if metadata and any(record.metadata.get(key) != value for key, value in metadata.items()):
            return None
        if namespace is not None and (record.namespace or "") != namespace:
            return None
        return record

    def admit(self, now: float) -> tuple[int, LimitedBy] | None:
        """Count one request, or (retry_after, limit) when a limit refuses it (nothing counted)."""
        limits = self.limits
        if limits.max_requests is not None and self.request_count >= limits.max_requests:
            # the cap holds until the session expires or is removed for inactivity
            expires_at = self.expires_at
            if expires_at is not None:
                wait = math.ceil(expires_at - now)
            else:
                wait = _NO_DEADLINE_RETRY if math.isinf(self.deadline) else math.ceil(self.deadline - now)
            return max(wait, 1), "max_requests"
        if limits.max_requests_per_1_minute is not None:
            now_ms, window = round(now * 1000), self.window
            while window and window[0] <= now_ms - _WINDOW_MS:
                window.popleft()
            if len(window) >= limits.max_requests_per_1_minute:
                return max(-((now_ms - window[0] - _WINDOW_MS) // 1000), 1), "max_requests_per_1_minute"
            window.append(now_ms)
        self.request_count += 1
        return None

    def kept_reply(self, key: str, now: float) -> bytes | None:
        found = self.kept.get(key)
        return None if found is None or now >= found[0] else found[1]

    def keep(self, reply: IdempotentReply, now: float) -> None:
        for key in [key for key, (deadline, _) in self.kept.items() if now >= deadline]:
            del self.kept[key]
        self.kept[reply.key] = (now + reply.ttl_ms / 1000, reply.value)

    def set_history(self, messages: Sequence[StoredMessage], leading_system: int) -> None:
        self.messages = list(messages)
        self.leading_system = leading_system
        self.ordinals.clear()
        self.first_ordinal = 0
        self._number(self.messages, 0)

    def splice(self, write: TurnWrite) -> None:
        """The history becomes ``write.head + stored[drop_leading:] + write.tail``."""
        stored = self.messages
        drop = len(stored) if write.drop_leading == DROP_ALL else min(write.drop_leading, len(stored))
        rest_len = len(stored) - drop
        rest_lead = max(self.leading_system - drop, 0)
        self.leading_system = len(write.head) + rest_lead + (write.tail_leading_system if rest_lead == rest_len else 0)
        if drop == len(stored):
            self.ordinals.clear()
        else:
            for ordinal, message in enumerate(stored[:drop], self.first_ordinal):
                dropped = message_id(message.info)
                if dropped is not None and self.ordinals.get(dropped) == ordinal:
                    del self.ordinals[dropped]
        self.first_ordinal += drop - len(write.head)
        if drop or write.head:
            self.messages = [*write.head, *stored[drop:], *write.tail]
        else:
            stored.extend(write.tail)  # the common turn: append without copying the history
        self._number(write.head, self.first_ordinal)
        self._number(write.tail, self.first_ordinal + len(self.messages) - len(write.tail))

    def position(self, wanted: bytes) -> int | None:
        """Where the message ``wanted`` is in the history; None if it is not."""
        ordinal = self.ordinals.get(wanted)
        if ordinal is None:
            return None
        position = ordinal - self.first_ordinal
        if 0 <= position < len(self.messages) and message_id(self.messages[position].info) == wanted:
            return position
        self.set_history(self.messages, self.leading_system)  # out of step (a duplicate id): number afresh
        ordinal = self.ordinals.get(wanted)
        return None if ordinal is None else ordinal - self.first_ordinal

    def _number(self, messages: Sequence[StoredMessage], first: int) -> None:
        ordinals = self.ordinals
        for ordinal, message in enumerate(messages, first):
            found = message_id(message.info)
            if found is not None:
                ordinals[found] = ordinal


class MemoryLeases:
    """Each session's lease: (token, deadline) by (owner, session id)."""

    def __init__(self) -> None:
        self._leases: dict[tuple[str, str], tuple[str, float]] = {}

    def __len__(self) -> int:
        return len(self._leases)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._leases)

    def holder(self, key: tuple[str, str], now: float) -> str | None:
        """The token holding the lease, dropping a lease past its deadline."""
        token, deadline = self._leases.get(key, (None, math.inf))
        if now < deadline:
            return token
        del self._leases[key]
        return None

    def take(self, key: tuple[str, str], lease: Lease, now: float) -> None:
        self._leases[key] = (lease.token, now + lease.ttl_ms / 1000)

    def release(self, key: tuple[str, str], token: str, now: float) -> None:
        if self.holder(key, now) == token:
            del self._leases[key]

    def sweep(self, now: float) -> None:
        for key in [key for key, (_, deadline) in self._leases.items() if now >= deadline]:
            del self._leases[key]


def check_ttl(lease: Lease) -> None:
    if lease.ttl_ms < 1:
        raise ValueError(f"a lease needs a positive ttl_ms, not {lease.ttl_ms!r}")
