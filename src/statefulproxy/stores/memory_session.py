"""One session of the memory store: its fields, status, record and request admission."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from .base import (
    ExpiresAfter,
    HistoryWindow,
    IdempotentReply,
    SessionLimits,
    SessionRecord,
    SessionStatus,
    StoredMessage,
)

_WINDOW_MS = 60_000  # the sliding window of max_requests_per_1_minute
_NO_DEADLINE_RETRY = 86400  # retry_after of a capped session that never goes away

LimitedBy = Literal["max_requests_per_1_minute", "max_requests"]


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
