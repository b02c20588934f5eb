"""A turn's load from Redis: a session's state, its history and its lease in one round trip.

On one node the common turn (an active session without rate limits, its lease free, its TTL
fresh, no Idempotency-Key) is read by plain commands in one MULTI: ``HMGET`` of the meta
fields, ``PTTL``, ``GET`` and ``SET NX PX`` of the lease, ``LRANGE``, and for a capped owner
``ZSCORE`` / ``ZCARD`` of its index (room for a new session). In the bench that costs
redis-server 10-15 µs against about 30 for the LOAD script (bench/PROFILE.md): Lua in Redis
pays a couple of microseconds per ``redis.call``, a plain command in a transaction a fraction
of one. Such a load changes nothing in the session, so it is not
counted there: the turn's commit (or, without one, the release of its lease) counts it in
``request_count``, in the same step. A busy lease and an absent session are answered from what
it read, as the LOAD script would. When the turn needs more (a limit to count against, TTLs to
refresh, an owner at the cap, an ended or expired session to refuse) the LOAD script runs after
it and decides; it takes the lease the transaction took as the turn's own, and drops it when it
refuses the turn. A turn with an Idempotency-Key runs only the script.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, cast

from ..errors import SessionBusy
from .base import Lease, SessionSnapshot, SessionStatus
from .redis_codec import decode_window, lease_args
from .resp import EXEC, MULTI, RespClient

_FOREVER = 2**62  # TTLs that never run down: the store has none
# A session whose TTLs have run down past their slack (redis_scripts.stale) but that still has
# this long to live is loaded all the same, and its commit refreshes them: a session's first turn
# after a pause costs no second round trip. One closer to its end is refreshed by the LOAD
# script first, so that it cannot expire while the turn runs.
_REFRESH_AT_COMMIT_MS = 10 * 60_000


def ttl_slack_ms(ttl_ms: int) -> int:
    """How far a session's TTL may run down before a turn refreshes it (redis_scripts.stale)."""
    return min(60_000, max(1_000, ttl_ms // 1000))


async def plain_load(
    client: RespClient, session_id: str, keys: tuple[str, ...], lease: Lease, now: float, ttl_ms: int, cap: int
) -> tuple[SessionSnapshot, int] | Literal[False] | None:
    """A turn's load by plain commands: the snapshot of an active session (the request left to count)
    and how many ms its TTLs stay fresh (negative: its commit refreshes them); None for an absent
    session (the lease taken); False when the LOAD script must decide. SessionBusy when another turn
    holds the lease. ``keys`` are the session's, then on one node its owner's index."""
    lease_args(lease)  # a lease without a positive TTL is a ValueError, before anything is sent
    indexed = bool(cap) and len(keys) > 7  # a new session needs room under the owner's cap
    before, after = _packed_load(keys[0], keys[1], keys[3], keys[7] if indexed else "", session_id)
    token, ttl = lease.token.encode(), b"%d" % lease.ttl_ms
    set_args = b"$%d\r\n%s\r\n$2\r\nNX\r\n$2\r\nPX\r\n$%d\r\n%s\r\n" % (len(token), token, len(ttl), ttl)
    replies = await client.packed_transaction(before + set_args + after, 7 if indexed else 5)
    meta, pttl, holder, took, elements, *index = replies
    if holder is not None and holder != token:
        raise SessionBusy(f"session {session_id!r} is busy: another turn holds its lease")
    status, expires_at, leading_system, rpm, max_requests, window = meta
    fresh_ms = pttl - (ttl_ms - ttl_slack_ms(ttl_ms)) if ttl_ms > 0 else _FOREVER
    if took is None:  # the turn's own lease already: the script renews it
        return False
    if status is None:
        return None if not index or index[0] is not None or index[1] < cap else False
    if (
        status != b"active"
        or (expires_at and int(now) >= int(expires_at))
        or rpm
        or max_requests
        # TTLs run down by their slack are refreshed by the commit; one about to run out, by the script
        or (fresh_ms < 0 and pttl < _REFRESH_AT_COMMIT_MS)
    ):
        return False  # refused (the script drops the lease), limits to count against, or TTLs to refresh
    return snapshot(session_id, "active", leading_system, elements, window), fresh_ms


@functools.lru_cache(maxsize=4096)  # a session's keys stay; only the lease token and TTL change
def _packed_load(meta: str, msgs: str, lease: str, index: str, session_id: str) -> tuple[bytes, bytes]:
    """The load's transaction, packed, around its SET's token and NX PX ttl: what comes before, and
    after. Packing these few commands by hand costs a fifth of packing each by hiredis, every turn."""
    meta_b, lease_b = _bulk(meta), _bulk(lease)
    fields = (b"status", b"expires_at", b"leading_system", b"rpm", b"max_requests", b"history_window")
    hmget = b"".join((b"*8\r\n$5\r\nHMGET\r\n", meta_b, *map(_bulk, fields)))
    before = b"".join((MULTI, hmget, b"*2\r\n$4\r\nPTTL\r\n", meta_b))
    before += b"*2\r\n$3\r\nGET\r\n" + lease_b + b"*6\r\n$3\r\nSET\r\n" + lease_b
    after = b"*4\r\n$6\r\nLRANGE\r\n" + _bulk(msgs) + b"$1\r\n0\r\n$2\r\n-1\r\n"
    if index:
        index_b = _bulk(index)
        after += b"*3\r\n$6\r\nZSCORE\r\n" + index_b + _bulk(session_id) + b"*2\r\n$5\r\nZCARD\r\n" + index_b
    return before, after + EXEC


def _bulk(value: str | bytes) -> bytes:
    encoded = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(encoded), encoded)


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
