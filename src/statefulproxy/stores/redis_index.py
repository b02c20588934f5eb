"""Each owner's session index in Redis: the listing, the per-owner session cap, and the index's TTL.

The index is ``<prefix>:{i<s>}:index`` (session ids scored by INCR on ``:seq``), ``s`` a hash of
the owner, on its own slot. Both keys expire with the owner's sessions: every turn and every
creation sets their TTL to the session TTL plus a margin, so the index outlives every session it
lists and an idle owner leaves nothing behind. Entries whose session is gone are dropped
lazily: by a listing that reaches them, and when the owner looks full (an expired session's
entry must not count against the cap).

On one node (and Sentinel's master) the session scripts list, count and refresh in their own
atomic step (redis_scripts.py); on a Cluster the index is another node's, and the scripts here
run beside the session's: the index first when a session is created (a round trip more), the
refresh concurrently with a turn's load and commit (no round trip more).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal

from .base import SessionRecord, SessionStatus
from .limits import NO_EXPIRY_RETRY, session_limit_error
from .redis_codec import translate_errors
from .redis_scripts import OWNER_LUA, index_margin_ms
from .resp import Script

_BATCH = 100  # index entries read per listing round trip, once the first batch is not enough
_MAX_REMEMBERED = 10_000  # owners whose full index is remembered (see OwnerIndex.room_in)
# ... for at most this long: a Redis evicting keys under maxmemory may drop a session before its TTL
_REMEMBER_FULL = 30.0

# KEYS index, seq. ARGV: session id, force "0"/"1", max sessions per owner (0 none), index ttl_ms.
# -> list_owner's 1 | 0 | -1
INDEX_ADD = (
    OWNER_LUA
    + """
return list_owner(KEYS[1], KEYS[2], ARGV[1], ARGV[2] == '1', ARGV[3], ARGV[4])
"""
)

# KEYS index, seq. ARGV: session id, max sessions per owner, index ttl_ms. Whether the owner may
# create the session (it is listed already, or the owner is under the cap); refreshes the TTLs.
# -> 1 | 0
INDEX_ROOM = (
    OWNER_LUA
    + """
touch_owner(KEYS[1], KEYS[2], ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then return 1 end
return 0
"""
)

# KEYS index, seq. ARGV: index ttl_ms.
INDEX_TOUCH = OWNER_LUA + "touch_owner(KEYS[1], KEYS[2], ARGV[1])\n"

# KEYS index. ARGV: id, score pairs. Removes each entry still at the score it was read
# with: one that a concurrent create moved meanwhile belongs to a live session.
INDEX_DROP = """
for i = 1, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[i + 1] then redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return 0
"""

SCRIPTS = (INDEX_ADD, INDEX_ROOM, INDEX_TOUCH, INDEX_DROP)


class OwnerIndex:
    """The owners' indexes of one store. ``cap`` is max_sessions_per_owner (0: none); ``ttl_ms`` the
    session TTL (0: none); ``meta_key(owner, session_id)`` and ``record(session_id, hgetall)`` are the
    store's."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        *,
        ttl_ms: int,
        cap: int,
        meta_key: Callable[[str, str], str],
        record: Callable[[str, list[bytes]], SessionRecord],
    ) -> None:
        self._client = client
        self._prefix = prefix
        self.ttl_ms = ttl_ms + index_margin_ms(ttl_ms) if ttl_ms else 0
        self.cap = cap
        self._meta_key = meta_key
        self._record = record
        self.scripts = tuple(Script(source) for source in SCRIPTS)
        self._add, self._room, self._touch, self._drop = self.scripts
        # owner -> (monotonic) when to read its full index again, and when its first session expires
        self._full_until: dict[str, tuple[float, float]] = {}

    def keys(self, owner: str) -> tuple[str, str]:
        return _index_keys(self._prefix, owner)

    async def add(self, owner: str, session_id: str, *, force: bool = False) -> int:
        """List ``session_id`` (a Cluster's creation): 1 listed now, 0 listed already, -1 at the cap."""
        with translate_errors("create"):
            added = await self._client.run_script(
                self._add, self.keys(owner), (session_id, "1" if force else "0", self.cap, self.ttl_ms)
            )
        return int(added)

    async def list_new(self, owner: str, session_id: str) -> bool | None:
        """List a session about to be created (a Cluster): whether it was listed already; None at the cap."""
        added = await self.add(owner, session_id)
        if added < 0 and await self.room_in(owner) is None:
            added = await self.add(owner, session_id)
        return None if added < 0 else added == 0

    async def relist(self, owner: str, session_id: str, listed: bool) -> None:
        # Created, but its id was listed already: a dead namesake's entry. Move it to the newest.
        if listed:
            await self.add(owner, session_id, force=True)

    def touch(self, owner: str) -> Coroutine[Any, Any, Any]:
        """Refresh the owner's index TTL (a Cluster's turn), to run beside the session's script."""
        touched: Coroutine[Any, Any, Any] = self._client.run_script(self._touch, self.keys(owner), (self.ttl_ms,))
        return touched

    async def claim(self, owner: str, session_id: str, release: Callable[[], Awaitable[None]]) -> None:
        """Refuse a first turn on a Cluster whose owner is at the cap, after ``release`` of the lease it took."""
        if await self.has_room(owner, session_id):
            return
        wait = await self.room_in(owner)
        if wait is None and await self.has_room(owner, session_id):
            return
        await release()
        raise session_limit_error(self.cap, wait or 1)

    async def has_room(self, owner: str, session_id: str) -> bool:
        """Whether ``owner`` may create ``session_id`` (a Cluster's first turn, before it is forwarded)."""
        with translate_errors("load"):
            room = await self._client.run_script(self._room, self.keys(owner), (session_id, self.cap, self.ttl_ms))
        return bool(room)

    async def room_in(self, owner: str) -> float | None:
        """After the cap refused ``owner`` one more session: drop the entries of its sessions that are
        gone. None when some were (ask again), else the seconds until its first session expires.

        An index found full of live sessions is not read again for a while: none of them can expire
        before the first one does (a refused client retrying at once costs one script, not a scan).
        """
        now = time.monotonic()
        recheck_at, first_expiry = self._full_until.get(owner, (0.0, 0.0))
        if now < recheck_at:
            return first_expiry - now
        index = self.keys(owner)[0]
        with translate_errors("create"):
            flat = await self._client.execute(b"ZRANGE", index, 0, -1, b"WITHSCORES")
            entries = list(zip(flat[::2], flat[1::2], strict=True))
            ttls = await asyncio.gather(
                *(self._client.execute(b"PTTL", self._meta_key(owner, sid.decode())) for sid, _ in entries)
            )
            dead = [part for entry, ttl in zip(entries, ttls, strict=True) if ttl == -2 for part in entry]
            if dead:
                await self._client.run_script(self._drop, (index,), tuple(dead))
                return None
        live = [ttl for ttl in ttls if ttl >= 0]  # -1: a session without a TTL
        wait = min(live) / 1000 if live else NO_EXPIRY_RETRY
        if len(self._full_until) >= _MAX_REMEMBERED:
            self._full_until.clear()
        self._full_until[owner] = (now + min(wait, _REMEMBER_FULL), now + wait)
        return wait

    async def list(
        self,
        owner: str,
        *,
        limit: int,
        order: Literal["asc", "desc"],
        after: str | None,
        before: str | None,
        status: SessionStatus | None,
        metadata: dict[str, str] | None,
        namespace: str | None,
    ) -> tuple[list[SessionRecord], bool] | None:
        """Store.list_sessions."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        client, index = self._client, self.keys(owner)[0]
        # `before` alone pages backwards: walk from it towards the listing's start
        backwards = before is not None and after is None
        first, last = (before, None) if backwards else (after, before)
        cursors = [cursor for cursor in (first, last) if cursor is not None]
        lookups = [client.execute(b"ZSCORE", index, cursor) for cursor in cursors]
        if namespace is not None:  # a cursor of another namespace is no cursor here
            lookups += [client.execute(b"HGET", self._meta_key(owner, cursor), b"namespace") for cursor in cursors]
        with translate_errors("list_sessions"):
            looked_up = await asyncio.gather(*lookups)
        scores, namespaces = looked_up[: len(cursors)], looked_up[len(cursors) :]
        if None in scores or any((value or b"").decode() != namespace for value in namespaces):
            return None
        descending = (order == "desc") != backwards  # the walk's direction in index scores
        start_bound = (b"+inf" if descending else b"-inf") if first is None else b"(" + scores[0]
        stop_bound = (b"-inf" if descending else b"+inf") if last is None else b"(" + scores[-1]

        found: list[SessionRecord] = []
        dead: list[bytes] = []
        filtered = status is not None or metadata or namespace is not None
        batch = max(limit + 1, _BATCH) if filtered else limit + 1
        command = b"ZREVRANGEBYSCORE" if descending else b"ZRANGEBYSCORE"
        with translate_errors("list_sessions"):
            while len(found) <= limit:
                flat = await client.execute(command, index, start_bound, stop_bound, b"WITHSCORES", b"LIMIT", 0, batch)
                entries = list(zip(flat[::2], flat[1::2], strict=True))
                metas = await asyncio.gather(
                    *(client.execute(b"HGETALL", self._meta_key(owner, sid.decode())) for sid, _ in entries)
                )
                for (sid, score), fields in zip(entries, metas, strict=True):
                    if not fields:
                        dead += [sid, score]
                        continue
                    record = self._record(sid.decode(), fields)
                    if (
                        (status is None or record.status == status)
                        and _has(record.metadata, metadata)
                        and (namespace is None or (record.namespace or "") == namespace)
                    ):
                        found.append(record)
                        if len(found) > limit:
                            break
                if len(entries) < batch:
                    break
                start_bound = b"(" + entries[-1][1]
                batch = max(batch, _BATCH)
            if dead:
                await client.run_script(self._drop, (index,), tuple(dead))
        page = found[:limit]
        if backwards:
            page.reverse()
        return page, len(found) > limit


def _has(fields: dict[str, str], wanted: dict[str, str] | None) -> bool:
    return not wanted or all(fields.get(key) == value for key, value in wanted.items())


@functools.lru_cache(maxsize=1024)  # most turns name their owner's index keys
def _index_keys(prefix: str, owner: str) -> tuple[str, str]:
    digest = hashlib.blake2b(owner.encode(), digest_size=16).hexdigest()
    return f"{prefix}:{{i{digest}}}:index", f"{prefix}:{{i{digest}}}:seq"
