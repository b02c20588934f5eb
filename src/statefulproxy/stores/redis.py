"""The Redis store: per session a hash, a list, a rate window, a lease, kept replies and an id index;
one Lua script per change (but a common turn's load: plain commands, stores/redis_load.py).

Session keys are ``<prefix>:{<h>}:meta`` (hash), ``:msgs`` (list), ``:window`` (sorted set),
``:lease`` (the holding turn's token, always with a PX TTL), ``:kept`` / ``:kept_until``
(replies kept under idempotency keys, and when each expires) and ``:ids`` (message id ->
ordinal, for paging), ``h`` a hash of (owner, session id): no raw id or credential hash ever
names a key, and the shared ``{h}`` tag keeps each script on one Redis Cluster slot. A list
element is ``replay + b"\\n" + info`` (orjson never emits a raw newline). ``now`` comes from the
injected clock, never from Redis ``TIME`` (but lease TTLs are Redis PX times). Every key has a
TTL when the store has one, the owners' indexes included (stores/redis_index.py); the shared
owner secret ``<prefix>:secret`` has none.

The URL picks the client: one node, a Redis Cluster (stores/cluster.py) or Sentinel's master
(stores/sentinel.py). On one node a session's scripts also do its owner's index work (the cap,
the listing, the index TTL), and a load that runs its script reads the history by a plain LRANGE
beside it in one MULTI. On a Cluster each owner's index is on one slot, and each session on its own: creating
writes the index first (a round trip more), deleting unlists the session after deleting it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal, cast

import orjson

from ..errors import ConfigError, SessionBusy, StoreError
from . import redis_history as history
from . import redis_manage_scripts as manage
from . import redis_restore
from . import redis_scripts as lua
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
)
from .cluster import ClusterClient, cluster_from_url
from .limits import session_limit_error
from .redis_address import address_from_url
from .redis_codec import (
    commit_args,
    encode,
    encode_window,
    lease_args,
    new_fields,
    optional,
    session_keys,
    session_record,
    translate_errors,
)
from .redis_index import OwnerIndex
from .redis_load import plain_load, script_snapshot
from .redis_secret import SharedSecret
from .resp import RespAddress, RespAuthError, RespClient, RespError, Script
from .sentinel import SentinelClient, sentinel_from_url


class RedisStore:
    """Sessions in Redis, shared by every proxy replica pointed at it.

    ``url`` is a ``redis://`` or ``rediss://`` URL as redis-py parses it, or a ``redis+cluster://``
    or ``redis+sentinel://`` one (CONTRACT.md section 2). Nothing connects before ``open()`` or the
    first call. ``ttl`` is the inactivity TTL in seconds (None: never); ``clock`` returns unix
    seconds; a command unanswered for ``timeout`` s fails with StoreError (connecting: 2 s at most).
    ``max_sessions_per_owner`` caps each owner's sessions (0: no cap).

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
        max_sessions_per_owner: int = 0,
    ) -> None:
        self._client = client_from_url(url, connect_timeout=min(timeout, 2.0), timeout=timeout)
        # one node: commands started in one loop iteration go out in order on one connection (resp.py)
        self._pipelined = isinstance(self._client, RespClient)
        # not a Cluster: a script may touch the session's and its owner's index keys at once
        self._joined = not isinstance(self._client, ClusterClient)
        self._ttl_ms = 0 if ttl is None else max(round(ttl * 1000), 1)
        self._clock = clock
        self._prefix = key_prefix
        self._secret = SharedSecret(self._client, f"{key_prefix}:secret", clock)
        self._index = OwnerIndex(
            self._client,
            key_prefix,
            ttl_ms=self._ttl_ms,
            cap=max_sessions_per_owner,
            meta_key=lambda owner, session_id: self._keys(owner, session_id)[0],
            record=self._record,
        )
        turns = (lua.LOAD, lua.COMMIT, lua.CREATE, manage.UPDATE, manage.CLEAR, history.MESSAGES, manage.END)
        reads = (history.MESSAGES_PAGE, history.MESSAGE_POSITIONS, lua.LOAD_WITHOUT_HISTORY)
        self._scripts = tuple(Script(s) for s in (*turns, manage.DELETE, *reads, *manage.LEASES))
        self._load, self._commit, self._create, self._update, self._clear, self._messages = self._scripts[:6]
        self._end, self._delete, self._page, self._positions, self._load_without_history, *leases = self._scripts[6:]
        self._renew_lease, self._release_lease = leases
        # lease tokens of turns loaded without counting (redis_load.py): until when their TTLs are fresh
        self._uncounted: dict[str, float] = {}

    @property
    def address(self) -> RespAddress:
        return self._client.address

    async def open(self) -> None:
        """Check that Redis answers and preload the scripts; StoreError if it does not, ConfigError if it
        refuses the credentials (a mistake in the settings, not an outage)."""
        try:
            with translate_errors("open"):
                scripts = (*self._scripts, *self._index.scripts, self._secret.script)
                await asyncio.gather(*(self._client.execute(b"SCRIPT", b"LOAD", s.source) for s in scripts))
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
        return await self._secret.read()

    async def load(
        self, owner: str, session_id: str, lease: Lease | None = None, idempotency_key: str | None = None
    ) -> SessionSnapshot | None:
        now, index = self._clock(), self._index
        if lease is not None and idempotency_key is None and self._pipelined:
            keys, client = self._joined_keys(owner, session_id), cast(RespClient, self._client)
            with translate_errors("load"):
                plain = await plain_load(client, session_id, keys, lease, now, self._ttl_ms, index.cap)
            if plain is not False:  # else the script decides
                if plain is not None:  # counted by the commit, or by the lease's release
                    self._uncounted[lease.token] = time.monotonic() + plain[1] / 1000
                return None if plain is None else plain[0]
        args: tuple[Any, ...] = (int(now), round(now * 1000), self._ttl_ms, idempotency_key or "", session_id)
        args += (index.cap, index.ttl_ms, *lease_args(lease))
        found = await self._load_script(owner, session_id, args)
        if found == b"full":  # one node: the owner is at its cap, and this would be a new session
            wait = await index.room_in(owner)
            if wait is None:  # some of its sessions were gone: ask again
                found = await self._load_script(owner, session_id, args)
            if found == b"full":
                raise session_limit_error(index.cap, wait or 1)
        if found is None:
            if lease is not None and index.cap and not self._joined:  # a Cluster: ask the index's node
                await index.claim(owner, session_id, lambda: self.release_lease(owner, session_id, lease.token))
            return None
        if isinstance(found, bytes):  # b"busy"
            raise SessionBusy(f"session {session_id!r} is busy: another turn holds its lease")
        return script_snapshot(session_id, found)

    async def commit(self, owner: str, session_id: str, write: TurnWrite) -> CommitResult:
        new = write.create
        flags = self._commit_flags(write.lease_token)
        args = commit_args(write, self._clock(), self._ttl_ms, session_id, self._index.cap, self._index.ttl_ms, flags)
        if new is None or self._joined:
            result = await self._turn_script("commit", self._commit, owner, session_id, args)
            if result == b"limited" and await self._index.room_in(owner) is None:
                result = await self._turn_script("commit", self._commit, owner, session_id, args)
            return "ok" if result == b"new" else cast(CommitResult, result.decode())
        listed = await self._index.list_new(owner, session_id)
        if listed is None:
            if write.lease_token is not None:  # the commit script would have released it
                await self.release_lease(owner, session_id, write.lease_token)
            return "limited"
        result = await self._run("commit", self._commit, owner, session_id, *args)
        if result == b"new":
            await self._index.relist(owner, session_id, listed)
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
        now, index = int(self._clock()), self._index
        args = (now, self._ttl_ms, *new_fields(new, now), session_id, index.cap, index.ttl_ms, leading_system)
        args += tuple(encode(messages))
        if self._joined:
            keys, wait = self._joined_keys(owner, session_id), None
            with translate_errors("create"):
                flat = await self._client.run_script(self._create, keys, args)
                if flat == b"full" and (wait := await index.room_in(owner)) is None:
                    flat = await self._client.run_script(self._create, keys, args)  # some were gone: again
            if flat == b"full":
                raise session_limit_error(index.cap, wait or 1)
            return None if flat is None else self._record(session_id, flat)
        listed = await index.list_new(owner, session_id)
        if listed is None:
            raise session_limit_error(index.cap, await index.room_in(owner) or 1)
        flat = await self._run("create", self._create, owner, session_id, *args)
        if flat is None:
            return None
        await index.relist(owner, session_id, listed)
        return self._record(session_id, flat)

    async def restore(self, owner: str, restored: RestoredSession, *, replace: bool = False) -> bool:
        return await redis_restore.restore(self, owner, restored, replace)

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
        return await self._index.list(
            owner,
            limit=limit,
            order=order,
            after=after,
            before=before,
            status=status,
            metadata=metadata,
            namespace=namespace,
        )

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
        return None if elements is None else history.stored_messages(elements)

    async def messages_page(self, owner: str, session_id: str, start: int, stop: int | None) -> MessagePage | None:
        found = await self._run("messages_page", self._page, owner, session_id, *history.page_args(start, stop))
        return None if found is None else history.message_page(found)

    async def message_positions(
        self, owner: str, session_id: str, message_ids: Sequence[str]
    ) -> tuple[list[int | None], int] | None:
        found = await self._run("message_positions", self._positions, owner, session_id, *message_ids)
        return None if found is None else history.positions(found)

    async def clear(self, owner: str, session_id: str) -> SessionRecord | None:
        flat = await self._run("clear", self._clear, owner, session_id, int(self._clock()))
        return None if flat is None else self._record(session_id, flat)

    async def end(self, owner: str, session_id: str) -> SessionRecord | None:
        flat = await self._run("end", self._end, owner, session_id)
        return None if flat is None else self._record(session_id, flat)

    async def delete(self, owner: str, session_id: str) -> bool:
        # the session first: an index entry left alone is harmless, a session without one is not
        deleted = self._client.run_script(self._delete, self._keys(owner, session_id), ())
        unlisted = self._client.execute(b"ZREM", self._index.keys(owner)[0], session_id)
        with translate_errors("delete"):
            existed, _ = await self._in_order(deleted, unlisted)
        return bool(existed)

    async def renew_lease(self, owner: str, session_id: str, lease: Lease) -> bool:
        return bool(await self._run("renew_lease", self._renew_lease, owner, session_id, *lease_args(lease)))

    async def release_lease(self, owner: str, session_id: str, token: str) -> None:
        count = self._commit_flags(token) & 1
        await self._run("release_lease", self._release_lease, owner, session_id, token, count)

    def _commit_flags(self, token: str | None) -> int:
        """The commit's flags for the turn holding ``token``, asked once: 1 it is still to be counted
        (its load did not), 2 as well: its load found the TTLs fresh enough to last until now."""
        fresh_until = self._uncounted.pop(token, None) if token is not None else None
        if fresh_until is None:
            return 0
        return 3 if time.monotonic() < fresh_until else 1

    async def put_client_secret(
        self, secret_hash: str, owner: str, session_id: str, ttl: float, grant: bytes = b""
    ) -> None:
        # owner and session id hold no newline; the grant, last, may
        key, value = f"{self._prefix}:cs:{secret_hash}", b"\n".join((owner.encode(), session_id.encode(), grant))
        with translate_errors("put_client_secret"):
            await self._client.execute(b"SET", key, value, b"PX", max(round(ttl * 1000), 1))

    async def client_secret(self, secret_hash: str) -> tuple[str, str, bytes] | None:
        with translate_errors("client_secret"):
            value = await self._client.execute(b"GET", f"{self._prefix}:cs:{secret_hash}")
        if value is None:
            return None
        owner, _, rest = value.partition(b"\n")
        session_id, _, grant = rest.partition(b"\n")  # a record written before grants has none: b""
        return owner.decode(), session_id.decode(), grant

    def _keys(self, owner: str, session_id: str) -> tuple[str, ...]:
        return session_keys(self._prefix, owner, session_id)

    def _joined_keys(self, owner: str, session_id: str) -> tuple[str, ...]:
        """The session's keys, and on one node its owner's index keys."""
        keys = session_keys(self._prefix, owner, session_id)
        return (*keys, *self._index.keys(owner)) if self._joined else keys

    async def _run(self, operation: str, script: Script, owner: str, session_id: str, *args: Any) -> Any:
        with translate_errors(operation):
            return await self._client.run_script(script, self._keys(owner, session_id), args)

    async def _turn_script(
        self, operation: str, script: Script, owner: str, session_id: str, args: Sequence[Any]
    ) -> Any:
        """LOAD or COMMIT, with the owner's index TTL refreshed: in the script on one node, beside it on a Cluster."""
        with translate_errors(operation):
            keys = self._joined_keys(owner, session_id)
            if self._joined or not self._index.ttl_ms:
                return await self._client.run_script(script, keys, tuple(args))
            result, _ = await asyncio.gather(
                self._client.run_script(script, keys, tuple(args)), self._index.touch(owner)
            )
            return result

    async def _load_script(self, owner: str, session_id: str, args: tuple[Any, ...]) -> Any:
        if not self._pipelined:  # on one node the history is read by a plain LRANGE in the same MULTI
            return await self._turn_script("load", self._load, owner, session_id, args)
        keys = self._joined_keys(owner, session_id)
        with translate_errors("load"):
            found, history = await cast(RespClient, self._client).run_script_then(
                self._load_without_history, keys, args, (b"LRANGE", keys[1], 0, -1)
            )
        if isinstance(found, list) and len(found) == 4 and found[0] != b"kept":  # a history to return
            found[2] = history
        return found

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

    def _record(self, session_id: str, flat: list[bytes]) -> SessionRecord:
        return session_record(session_id, flat, self._clock())


def client_from_url(url: str, *, connect_timeout: float, timeout: float) -> RespClient | ClusterClient | SentinelClient:
    """The client a store URL names: one node, a Redis Cluster, or the master Sentinel names."""
    scheme = url.partition("://")[0].lower()
    if scheme == "redis+cluster":
        return cluster_from_url(url, connect_timeout=connect_timeout, timeout=timeout)
    if scheme == "redis+sentinel":
        return sentinel_from_url(url, connect_timeout=connect_timeout, timeout=timeout)
    return RespClient(address_from_url(url), connect_timeout=connect_timeout, timeout=timeout)
