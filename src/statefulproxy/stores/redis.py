"""The Redis store: per session a hash, a list, a rate window, a lease and kept replies; one Lua script per change.

Session keys are ``<prefix>:{<h>}:meta`` (hash), ``:msgs`` (list), ``:window`` (sorted set),
``:lease`` (the holding turn's token, always with a PX TTL) and ``:kept`` / ``:kept_until``
(replies kept under idempotency keys, and when each expires), ``h`` a hash of (owner, session id):
no raw id or credential hash ever names a key, and the shared ``{h}`` tag keeps each script on one
Redis Cluster slot. A list element is ``replay + b"\\n" + info`` (orjson never emits a raw newline).
``now`` comes from the injected clock, never from Redis ``TIME`` (but lease TTLs are Redis PX times).

Each owner's listing index is ``<prefix>:{i<s>}:index`` (session ids scored by INCR on
``:seq``), ``s`` a hash of the owner, on its own slot. Creating writes the index entry
first and the session second, pipelined in one round trip: an entry without a session is
dropped at list time, a session without an entry would be invisible. Index and seq keys
have no TTL (an index must never expire before a session it lists): entries of sessions
gone idle are dropped when a listing reaches them.

The URL picks the client: one node, a Redis Cluster (stores/cluster.py) or Sentinel's master
(stores/sentinel.py). On a Cluster each owner's whole index (and seq) is on one slot, and
each session on its own: no pipeline orders the two, so creating awaits the index write
before writing the session (a round trip more, on creation only) and deleting awaits the
session's deletion before unlisting it; through Sentinel too, as a retry may overtake.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal, cast

import orjson

from ..errors import ConfigError, SessionBusy, StoreError
from . import redis_scripts as lua
from .base import (
    UNCHANGED,
    CommitResult,
    HistoryWindow,
    Lease,
    NewSession,
    SessionRecord,
    SessionSnapshot,
    SessionStatus,
    StoredMessage,
    TurnWrite,
    Unchanged,
)
from .cluster import ClusterClient, cluster_from_url
from .redis_address import address_from_url
from .redis_codec import (
    NO_NEW_FIELDS,
    USAGE,
    decode_window,
    encode,
    encode_window,
    lease_args,
    new_fields,
    optional,
    session_record,
    translate_errors,
)
from .resp import RespAddress, RespAuthError, RespClient, RespError, Script
from .sentinel import SentinelClient, sentinel_from_url

_BATCH = 100  # index entries read per listing round trip, once the first batch is not enough


class RedisStore:
    """Sessions in Redis, shared by every proxy replica pointed at it.

    ``url`` is a ``redis://`` or ``rediss://`` URL as redis-py parses it, or a
    ``redis+cluster://`` or ``redis+sentinel://`` one (CONTRACT.md section 2). Nothing
    connects before ``open()`` or the first call. ``ttl`` is the inactivity TTL in
    seconds (None: keys never expire); ``clock`` returns unix seconds; a command
    unanswered for ``timeout`` seconds fails with StoreError (connecting: at most 2 s).

    ``update`` changes ended and expired sessions too (title and metadata are management
    data); ``clear`` changes only active ones. Neither refreshes the inactivity TTL. Every
    admitted ``load`` of an active session counts in ``request_count``, limits or not; a
    refused one changes nothing (not even the TTL) and carries no history.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float | None = None,
        clock: Callable[[], float] = time.time,
        key_prefix: str = "sp",
        timeout: float = 5.0,
    ) -> None:
        self._client = client_from_url(url, connect_timeout=min(timeout, 2.0), timeout=timeout)
        # one node: commands started in one loop iteration go out in order on one connection (resp.py)
        self._pipelined = isinstance(self._client, RespClient)
        self._ttl_ms = 0 if ttl is None else max(round(ttl * 1000), 1)
        self._clock = clock
        self._prefix = key_prefix
        self._secret: bytes | None = None
        sources = (lua.LOAD, lua.COMMIT, lua.CREATE, lua.UPDATE, lua.CLEAR, lua.MESSAGES, lua.END, lua.DELETE)
        self._scripts = tuple(Script(s) for s in (*sources, lua.INDEX_DROP, lua.OWNER_SECRET, *lua.LEASES))
        self._load, self._commit, self._create, self._update, self._clear, self._messages = self._scripts[:6]
        self._end, self._delete, self._index_drop, self._secret_script = self._scripts[6:10]
        self._renew_lease, self._release_lease = self._scripts[10:]
        # sent as EVAL, never EVALSHA: a NOSCRIPT retry would reach Redis after the session it lists
        self._index_add = lua.INDEX_ADD.encode()

    @property
    def address(self) -> RespAddress:
        """Where the store connects to."""
        return self._client.address

    async def open(self) -> None:
        """Check that Redis answers and preload the scripts; StoreError if it does not, ConfigError if it
        refuses the credentials (a mistake in the settings, not an outage)."""
        try:
            with translate_errors("open"):
                await asyncio.gather(*(self._client.execute(b"SCRIPT", b"LOAD", s.source) for s in self._scripts))
        except StoreError as exc:
            if isinstance(exc.__cause__, RespAuthError):
                raise ConfigError(f"store: Redis refused the credentials ({exc.__cause__})") from None
            raise

    async def aclose(self) -> None:
        await self._client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._client.execute(b"PING"))
        except (RespError, OSError, TimeoutError):
            return False

    async def owner_secret(self) -> bytes:
        if self._secret is None:
            key = f"{self._prefix}:secret"
            with translate_errors("owner_secret"):
                self._secret = bytes(await self._client.run_script(self._secret_script, (key,), (os.urandom(32),)))
        return self._secret

    async def load(
        self, owner: str, session_id: str, lease: Lease | None = None, idempotency_key: str | None = None
    ) -> SessionSnapshot | None:
        now = self._clock()
        args = (int(now), round(now * 1000), self._ttl_ms, idempotency_key or "", *lease_args(lease))
        found = await self._run("load", self._load, owner, session_id, *args)
        if found is None:
            return None
        if isinstance(found, bytes):  # b"busy"
            raise SessionBusy(f"session {session_id!r} is busy: another turn holds its lease")
        if found[0] == b"kept":
            return SessionSnapshot(session_id, cast(SessionStatus, found[1].decode()), [], 0, idempotent=found[2])
        status = cast(SessionStatus, found[0].decode())
        if len(found) == 5:  # over a limit: the history is not needed
            retry_after, refused_by = found[3:]
            limited_by = cast(Literal["max_requests_per_1_minute", "max_requests"], refused_by.decode())
            return SessionSnapshot(session_id, status, [], 0, int(retry_after), limited_by)
        _, leading_system, elements, window = found
        replay = [element.partition(b"\n")[0] for element in elements]
        return SessionSnapshot(
            session_id,
            status,
            replay,
            int(leading_system),
            window=decode_window(window),
            info=lambda: [element.partition(b"\n")[2] for element in elements],
        )

    async def commit(self, owner: str, session_id: str, write: TurnWrite) -> CommitResult:
        new, now = write.create, self._clock()
        args: list[Any] = [int(now), self._ttl_ms, write.drop_leading, write.tail_leading_system]
        args.append(optional(write.title_hint))
        args += ["0", *NO_NEW_FIELDS] if new is None else ["1", *new_fields(new, args[0])]
        kept = write.idempotent
        args.append(optional(write.lease_token))
        args += ["-", "", "", ""] if kept is None else [kept.key, kept.value, round(now * 1000), kept.ttl_ms]
        args.append(len(write.usage))
        for name, tokens in write.usage.items():
            args += [USAGE + name, int(tokens)]
        args.append(len(write.head))
        args += encode(write.head)
        args += encode(write.tail)
        if new is None:  # a plain turn: no index work
            result = await self._run("commit", self._commit, owner, session_id, *args)
            return cast(CommitResult, result.decode())
        write_turn = self._client.run_script(self._commit, self._keys(owner, session_id), tuple(args))
        listed, result = await self._index_then("commit", owner, session_id, write_turn)
        if result == b"new":
            await self._relist(owner, session_id, listed)
            return "ok"
        return cast(CommitResult, result.decode())

    async def create(
        self,
        owner: str,
        session_id: str,
        new: NewSession,
        messages: Sequence[StoredMessage] = (),
        leading_system: int = 0,
    ) -> SessionRecord | None:
        now = int(self._clock())
        args = (now, self._ttl_ms, *new_fields(new, now), leading_system, *encode(messages))
        write = self._client.run_script(self._create, self._keys(owner, session_id), args)
        listed, flat = await self._index_then("create", owner, session_id, write)
        if flat is None:
            return None
        await self._relist(owner, session_id, listed)
        return self._record(session_id, flat)

    async def get(self, owner: str, session_id: str) -> SessionRecord | None:
        with translate_errors("get"):
            flat = await self._client.execute(b"HGETALL", self._keys(owner, session_id)[0])
        return self._record(session_id, flat) if flat else None

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
        index = self._index_keys(owner)[0]
        # `before` alone pages backwards: walk from it towards the listing's start
        backwards = before is not None and after is None
        first, last = (before, None) if backwards else (after, before)
        cursors = [cursor for cursor in (first, last) if cursor is not None]
        lookups = [self._client.execute(b"ZSCORE", index, cursor) for cursor in cursors]
        if namespace is not None:  # a cursor of another namespace is no cursor here
            lookups += [self._client.execute(b"HGET", self._keys(owner, cursor)[0], b"namespace") for cursor in cursors]
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
                flat = await self._client.execute(
                    command, index, start_bound, stop_bound, b"WITHSCORES", b"LIMIT", 0, batch
                )
                entries = list(zip(flat[::2], flat[1::2], strict=True))
                metas = await asyncio.gather(
                    *(self._client.execute(b"HGETALL", self._keys(owner, sid.decode())[0]) for sid, _ in entries)
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
                await self._client.run_script(self._index_drop, (index,), tuple(dead))
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
        encoded = "-" if metadata is None else b"+" + orjson.dumps(metadata)
        window = "-" if isinstance(history_window, Unchanged) else encode_window(history_window)
        flat = await self._run("update", self._update, owner, session_id, optional(title), encoded, window)
        return None if flat is None else self._record(session_id, flat)

    async def messages(self, owner: str, session_id: str) -> list[StoredMessage] | None:
        elements = await self._run("messages", self._messages, owner, session_id)
        if elements is None:
            return None
        return [StoredMessage(replay, info) for replay, _, info in (e.partition(b"\n") for e in elements)]

    async def clear(self, owner: str, session_id: str) -> SessionRecord | None:
        flat = await self._run("clear", self._clear, owner, session_id, int(self._clock()))
        return None if flat is None else self._record(session_id, flat)

    async def end(self, owner: str, session_id: str) -> SessionRecord | None:
        flat = await self._run("end", self._end, owner, session_id)
        return None if flat is None else self._record(session_id, flat)

    async def delete(self, owner: str, session_id: str) -> bool:
        # the session first: an index entry left alone is harmless, a session without one is not
        deleted = self._client.run_script(self._delete, self._keys(owner, session_id), ())
        unlisted = self._client.execute(b"ZREM", self._index_keys(owner)[0], session_id)
        with translate_errors("delete"):
            existed, _ = await self._in_order(deleted, unlisted)
        return bool(existed)

    async def renew_lease(self, owner: str, session_id: str, lease: Lease) -> bool:
        return bool(await self._run("renew_lease", self._renew_lease, owner, session_id, *lease_args(lease)))

    async def release_lease(self, owner: str, session_id: str, token: str) -> None:
        await self._run("release_lease", self._release_lease, owner, session_id, token)

    async def put_client_secret(self, secret_hash: str, owner: str, session_id: str, ttl: float) -> None:
        key, value = f"{self._prefix}:cs:{secret_hash}", f"{owner}\n{session_id}"
        with translate_errors("put_client_secret"):
            await self._client.execute(b"SET", key, value, b"PX", max(round(ttl * 1000), 1))

    async def client_secret(self, secret_hash: str) -> tuple[str, str] | None:
        with translate_errors("client_secret"):
            value = await self._client.execute(b"GET", f"{self._prefix}:cs:{secret_hash}")
        if value is None:
            return None
        owner, _, session_id = value.decode().partition("\n")
        return owner, session_id

    def _keys(self, owner: str, session_id: str) -> tuple[str, ...]:
        digest = hashlib.blake2b(f"{owner}\0{session_id}".encode(), digest_size=16).hexdigest()
        base = f"{self._prefix}:{{{digest}}}"
        return f"{base}:meta", f"{base}:msgs", f"{base}:window", f"{base}:lease", f"{base}:kept", f"{base}:kept_until"

    def _index_keys(self, owner: str) -> tuple[str, str]:
        digest = hashlib.blake2b(owner.encode(), digest_size=16).hexdigest()
        return f"{self._prefix}:{{i{digest}}}:index", f"{self._prefix}:{{i{digest}}}:seq"

    async def _run(self, operation: str, script: Script, owner: str, session_id: str, *args: Any) -> Any:
        with translate_errors(operation):
            return await self._client.run_script(script, self._keys(owner, session_id), args)

    async def _index_then(self, operation: str, owner: str, session_id: str, write: Any) -> tuple[bool, Any]:
        """List ``session_id`` in the owner's index, then run ``write`` (one round trip on one node)."""
        index, seq = self._index_keys(owner)
        listed = self._client.execute(b"EVAL", self._index_add, 2, index, seq, session_id, b"0")
        with translate_errors(operation):
            added, result = await self._in_order(listed, write)
        return bool(added), result

    async def _in_order(self, first: Coroutine[Any, Any, Any], then: Coroutine[Any, Any, Any]) -> tuple[Any, Any]:
        """Both results, ``first`` run before ``then``: pipelined on one connection, else awaited first."""
        if self._pipelined:  # RespClient writes each command as its task starts, and gather starts them in order
            done, result = await asyncio.gather(first, then)
            return done, result
        try:
            done = await first
        except BaseException:
            then.close()  # never sent
            raise
        return done, await then

    async def _relist(self, owner: str, session_id: str, listed: bool) -> None:
        # Created, but its id was listed already: a dead namesake's entry. Move it to the newest.
        if not listed:
            index, seq = self._index_keys(owner)
            with translate_errors("create"):
                await self._client.execute(b"EVAL", self._index_add, 2, index, seq, session_id, b"1")

    def _record(self, session_id: str, flat: list[bytes]) -> SessionRecord:
        return session_record(session_id, flat, self._clock())


def _has(fields: dict[str, str], wanted: dict[str, str] | None) -> bool:
    return not wanted or all(fields.get(key) == value for key, value in wanted.items())


def client_from_url(url: str, *, connect_timeout: float, timeout: float) -> RespClient | ClusterClient | SentinelClient:
    """The client a store URL names: one node, a Redis Cluster, or the master Sentinel names."""
    scheme = url.partition("://")[0].lower()
    if scheme == "redis+cluster":
        return cluster_from_url(url, connect_timeout=connect_timeout, timeout=timeout)
    if scheme == "redis+sentinel":
        return sentinel_from_url(url, connect_timeout=connect_timeout, timeout=timeout)
    return RespClient(address_from_url(url), connect_timeout=connect_timeout, timeout=timeout)
