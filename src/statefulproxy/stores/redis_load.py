"""A turn's load from Redis: a session's state, its history and its lease in one round trip.

On one node the common turn (an active session without rate limits, its lease free, its TTL
fresh, no Idempotency-Key) is read by plain commands in one MULTI: ``HMGET`` of the meta
fields, ``PTTL``, ``GET`` and ``SET NX PX`` of the lease, ``LRANGE``, and for a capped owner
``ZSCORE`` / ``ZCARD`` of its index (room for a new session). Measured with RedisStore on this machine
(16 turns in flight, 10 messages), that costs redis-server about a quarter of the LOAD
script's CPU: Lua in Redis pays a couple of microseconds per ``redis.call``, a plain command
in a transaction a fraction of one. Such a load changes nothing in the session, so it is not
counted there: the turn's commit (or, without one, the release of its lease) counts it in
``request_count``, in the same step. A busy lease and an absent session are answered from what
it read, as the LOAD script would. When the turn needs more (a limit to count against, TTLs to
refresh, an owner at the cap, an ended or expired session to refuse) the LOAD script runs after
it and decides; it takes the lease the transaction took as the turn's own, and drops it when it
refuses the turn. A turn with an Idempotency-Key runs only the script.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from ..errors import SessionBusy
from .base import Lease, SessionSnapshot, SessionStatus
from .redis_codec import decode_window, lease_args
from .resp import RespClient

_FOREVER = 2**62  # TTLs that never run down: the store has none


def ttl_slack_ms(ttl_ms: int) -> int:
    """How far a session's TTL may run down before a turn refreshes it (redis_scripts.stale)."""
    return min(60_000, max(1_000, ttl_ms // 1000))


async def plain_load(
    client: RespClient, session_id: str, keys: tuple[str, ...], lease: Lease, now: float, ttl_ms: int, cap: int
) -> tuple[SessionSnapshot, int] | Literal[False] | None:
    """A turn's load by plain commands: the snapshot of an active session (the request left to count)
    and how many ms its TTLs stay fresh; None for an absent session (the lease taken); False when the
    LOAD script must decide. SessionBusy when another turn holds the lease. ``keys`` are the
    session's, then on one node its owner's index."""
    lease_args(lease)  # a lease without a positive TTL is a ValueError, before anything is sent
    commands: list[tuple[bytes | str | int, ...]] = [
        (b"HMGET", keys[0], b"status", b"expires_at", b"leading_system", b"rpm", b"max_requests", b"history_window"),
        (b"PTTL", keys[0]),
        (b"GET", keys[3]),
        (b"SET", keys[3], lease.token, b"NX", b"PX", lease.ttl_ms),
        (b"LRANGE", keys[1], 0, -1),
    ]
    if cap and len(keys) > 7:  # a new session needs room under the owner's cap
        commands += [(b"ZSCORE", keys[7], session_id), (b"ZCARD", keys[7])]
    meta, pttl, holder, took, elements, *index = await client.transaction(*commands)
    if holder is not None and holder != lease.token.encode():
        raise SessionBusy(f"session {session_id!r} is busy: another turn holds its lease")
    status, expires_at, leading_system, rpm, max_requests, window = meta
    if took is None:  # the turn's own lease already: the script renews it
        return False
    if status is None:
        return None if not index or index[0] is not None or index[1] < cap else False
    if (
        status != b"active"
        or (expires_at and int(now) >= int(expires_at))
        or rpm
        or max_requests
        or (fresh_ms := pttl - (ttl_ms - ttl_slack_ms(ttl_ms)) if ttl_ms > 0 else _FOREVER) < 0
    ):
        return False  # refused (the script drops the lease), limits to count against, or TTLs to refresh
    return snapshot(session_id, "active", leading_system, elements, window), fresh_ms


def snapshot(
    session_id: str, status: SessionStatus, leading_system: bytes, elements: list[bytes], window: bytes | None
) -> SessionSnapshot:
    replay = [element.partition(b"\n")[0] for element in elements]
    return SessionSnapshot(
        session_id,
        status,
        replay,
        int(leading_system or 0),
        window=decode_window(window),
        info=lambda: [element.partition(b"\n")[2] for element in elements],
    )


def script_snapshot(session_id: str, found: Any) -> SessionSnapshot:
    """The snapshot of a LOAD script's reply (not false, 'busy' or 'full')."""
    if found[0] == b"kept":
        return SessionSnapshot(session_id, cast(SessionStatus, found[1].decode()), [], 0, idempotent=found[2])
    status = cast(SessionStatus, found[0].decode())
    if len(found) == 5:  # over a limit: the history is not needed
        retry_after, refused_by = found[3:]
        limited_by = cast(Literal["max_requests_per_1_minute", "max_requests"], refused_by.decode())
        return SessionSnapshot(session_id, status, [], 0, int(retry_after), limited_by)
    _, leading_system, elements, window = found
    return snapshot(session_id, status, leading_system, elements, window)
