"""The Redis session store: one hash and one list per session, each change one Lua script.

Keys are ``<prefix>:{<h>}:meta`` (hash) and ``<prefix>:{<h>}:msgs`` (list) with ``h`` a
hash of (scope, session id), so no raw id or credential hash ever names a key, and the
shared ``{h}`` hash tag keeps every multi-key script on one Redis Cluster slot. A list
element is ``replay + b"\\n" + info``: orjson never emits a raw newline, so the first one
splits the two. ``now`` comes from the injected clock, never from Redis ``TIME``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import orjson
from redis.asyncio.connection import SSLConnection, parse_url

from ..errors import ConfigError, StoreError
from .base import (
    CommitResult,
    NewSession,
    SessionRecord,
    SessionSnapshot,
    SessionStatus,
    StoredMessage,
    TurnWrite,
)
from .resp import RespAddress, RespClient, RespError, Script

_USAGE = "u:"  # meta field prefix of each usage counter

_REFRESH = """
local function refresh(meta, msgs, ttl_ms)
  if tonumber(ttl_ms) > 0 then
    redis.call('PEXPIRE', meta, ttl_ms)
    redis.call('PEXPIRE', msgs, ttl_ms)
  end
end
"""

# title is "-" (none) or "+<title>", expires_at "" (none) or unix seconds. A list left
# without its meta hash is stale: drop it.
_CREATE_META = """
local function create_meta(meta, msgs, now, title, metadata, expires_at)
  redis.call('DEL', msgs)
  redis.call('HSET', meta, 'status', 'active', 'created_at', now, 'last_active_at', now,
    'expires_at', expires_at, 'metadata', metadata, 'leading_system', 0, 'message_count', 0)
  if title ~= '-' then redis.call('HSET', meta, 'title', string.sub(title, 2)) end
end
"""

# KEYS meta, msgs. ARGV: now, ttl_ms. -> false | {status, leading_system, messages}
_LOAD = (
    _REFRESH
    + """
local m = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'leading_system')
if not m[1] then return false end
local status = m[1]
local expires_at = tonumber(m[2])
if status == 'active' and expires_at and tonumber(ARGV[1]) >= expires_at then status = 'expired' end
if status == 'active' then refresh(KEYS[1], KEYS[2], ARGV[2]) end
return {status, m[3], redis.call('LRANGE', KEYS[2], 0, -1)}
"""
)

# KEYS meta, msgs. ARGV: [1] now, [2] ttl_ms, [3] drop_leading, [4] tail_leading_system,
# [5] title_hint ("-"/"+t"), [6] create "0"/"1", [7..9] create title, metadata, expires_at,
# [10] usage pair count, usage name/value pairs, head count, head elements, tail elements.
_COMMIT = (
    _REFRESH
    + _CREATE_META
    + """
local meta, msgs, now = KEYS[1], KEYS[2], ARGV[1]
local status = redis.call('HGET', meta, 'status')
if not status then
  if ARGV[6] == '0' then return 'missing' end
  create_meta(meta, msgs, now, ARGV[7], ARGV[8], ARGV[9])
elseif status == 'ended' then
  return 'ended'
else
  local expires_at = tonumber(redis.call('HGET', meta, 'expires_at'))
  if expires_at and tonumber(now) >= expires_at then return 'expired' end
end

-- Usage first: a script that fails midway keeps what it wrote, so do the one write that
-- can fail (HINCRBY overflow) before touching the history.
local i = 11 + 2 * tonumber(ARGV[10])
for j = 11, i - 1, 2 do redis.call('HINCRBY', meta, ARGV[j], ARGV[j + 1]) end

local len = redis.call('LLEN', msgs)
local drop = tonumber(ARGV[3])  -- negative: DROP_ALL
if drop < 0 or drop > len then drop = len end
local rest_len = len - drop
local rest_lead = math.max(tonumber(redis.call('HGET', meta, 'leading_system')) - drop, 0)
if rest_len == 0 then
  redis.call('DEL', msgs)
elseif drop > 0 then
  redis.call('LTRIM', msgs, drop, -1)
end

local n_head = tonumber(ARGV[i])
local head_first, tail_first = i + 1, i + 1 + n_head
-- unpack() is bounded by the Lua C stack: push in chunks. The head goes in front,
-- so its chunks are pushed last-first, each reversed.
local last = tail_first - 1
while last >= head_first do
  local first = math.max(last - 999, head_first)
  local chunk = {}
  for x = last, first, -1 do chunk[#chunk + 1] = ARGV[x] end
  redis.call('LPUSH', msgs, unpack(chunk))
  last = first - 1
end
local first = tail_first
while first <= #ARGV do
  local stop = math.min(first + 999, #ARGV)
  redis.call('RPUSH', msgs, unpack(ARGV, first, stop))
  first = stop + 1
end

local lead = n_head + rest_lead
if rest_lead == rest_len then lead = lead + tonumber(ARGV[4]) end
local count = n_head + rest_len + (#ARGV - tail_first + 1)
redis.call('HSET', meta, 'leading_system', lead, 'message_count', count, 'last_active_at', now)
if ARGV[5] ~= '-' and redis.call('HEXISTS', meta, 'title') == 0 then
  redis.call('HSET', meta, 'title', string.sub(ARGV[5], 2))
end
refresh(meta, msgs, ARGV[2])
return 'ok'
"""
)

# KEYS meta, msgs. ARGV: now, ttl_ms, title, metadata, expires_at. -> 1 created, 0 taken
_CREATE = (
    _REFRESH
    + _CREATE_META
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
create_meta(KEYS[1], KEYS[2], ARGV[1], ARGV[3], ARGV[4], ARGV[5])
refresh(KEYS[1], KEYS[2], ARGV[2])
return 1
"""
)

_MESSAGES = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('LRANGE', KEYS[2], 0, -1)
"""

_END = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'status', 'ended')
return redis.call('HGETALL', KEYS[1])
"""

_DELETE = """
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
return existed
"""

_SECRET = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""


class RedisStore:
    """Sessions in Redis, shared by every proxy replica pointed at it.

    ``url`` is a ``redis://`` or ``rediss://`` URL as redis-py parses it. Nothing
    connects before ``open()`` or the first call. ``ttl`` is the inactivity TTL in
    seconds (None: keys never expire); ``clock`` returns unix seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float | None = None,
        clock: Callable[[], float] = time.time,
        key_prefix: str = "sp",
    ) -> None:
        self._client = RespClient(address_from_url(url), connect_timeout=2.0, timeout=5.0)
        self._ttl_ms = 0 if ttl is None else max(round(ttl * 1000), 1)
        self._clock = clock
        self._prefix = key_prefix
        self._secret: bytes | None = None
        self._load, self._commit, self._create = Script(_LOAD), Script(_COMMIT), Script(_CREATE)
        self._messages, self._end, self._delete = Script(_MESSAGES), Script(_END), Script(_DELETE)
        self._secret_script = Script(_SECRET)

    @property
    def address(self) -> RespAddress:
        """Where the store connects to."""
        return self._client.address

    async def open(self) -> None:
        """Check that Redis answers and preload the scripts; StoreError if it does not."""
        scripts = (self._load, self._commit, self._create, self._messages, self._end, self._delete, self._secret_script)
        with _translate_errors("open"):
            await asyncio.gather(*(self._client.execute(b"SCRIPT", b"LOAD", script.source) for script in scripts))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._client.execute(b"PING"))
        except (RespError, OSError, TimeoutError):
            return False

    async def scope_secret(self) -> bytes:
        if self._secret is None:
            with _translate_errors("scope_secret"):
                secret = await self._client.run_script(
                    self._secret_script, (f"{self._prefix}:secret",), (os.urandom(32),)
                )
            self._secret = bytes(secret)
        return self._secret

    async def load(self, scope: str, session_id: str) -> SessionSnapshot | None:
        found = await self._run("load", self._load, scope, session_id, self._now(), self._ttl_ms)
        if found is None:
            return None
        status, leading_system, elements = found
        return SessionSnapshot(
            id=session_id,
            status=cast(SessionStatus, status.decode()),
            replay=[element.partition(b"\n")[0] for element in elements],
            leading_system=int(leading_system),
        )

    async def commit(self, scope: str, session_id: str, write: TurnWrite) -> CommitResult:
        new = write.create
        args: list[Any] = [self._now(), self._ttl_ms, write.drop_leading, write.tail_leading_system]
        args.append(_optional(write.title_hint))
        if new is None:
            args += ["0", "-", "", ""]
        else:
            args += ["1", _optional(new.title or None), orjson.dumps(new.metadata), _timestamp(new.expires_at)]
        args.append(len(write.usage))
        for name, tokens in write.usage.items():
            args += [_USAGE + name, int(tokens)]
        args.append(len(write.head))
        args += _encode(write.head)
        args += _encode(write.tail)
        result = await self._run("commit", self._commit, scope, session_id, *args)
        return cast(CommitResult, result.decode())

    async def create(self, scope: str, session_id: str, new: NewSession) -> SessionRecord | None:
        now = self._now()
        title = new.title or None
        args = (now, self._ttl_ms, _optional(title), orjson.dumps(new.metadata), _timestamp(new.expires_at))
        if not await self._run("create", self._create, scope, session_id, *args):
            return None
        status: SessionStatus = "expired" if new.expires_at is not None and now >= new.expires_at else "active"
        return SessionRecord(session_id, status, title, 0, now, now, new.expires_at, dict(new.metadata), {})

    async def get(self, scope: str, session_id: str) -> SessionRecord | None:
        meta_key, _ = self._keys(scope, session_id)
        with _translate_errors("get"):
            flat = await self._client.execute(b"HGETALL", meta_key)
        return self._record(session_id, dict(zip(flat[::2], flat[1::2], strict=True))) if flat else None

    async def messages(self, scope: str, session_id: str) -> list[StoredMessage] | None:
        elements = await self._run("messages", self._messages, scope, session_id)
        if elements is None:
            return None
        return [StoredMessage(replay, info) for replay, _, info in (e.partition(b"\n") for e in elements)]

    async def end(self, scope: str, session_id: str) -> SessionRecord | None:
        flat = await self._run("end", self._end, scope, session_id)
        if flat is None:
            return None
        return self._record(session_id, dict(zip(flat[::2], flat[1::2], strict=True)))

    async def delete(self, scope: str, session_id: str) -> bool:
        return bool(await self._run("delete", self._delete, scope, session_id))

    def _now(self) -> int:
        return int(self._clock())

    def _keys(self, scope: str, session_id: str) -> tuple[str, str]:
        digest = hashlib.blake2b(f"{scope}\0{session_id}".encode(), digest_size=16).hexdigest()
        return f"{self._prefix}:{{{digest}}}:meta", f"{self._prefix}:{{{digest}}}:msgs"

    async def _run(self, operation: str, script: Script, scope: str, session_id: str, *args: Any) -> Any:
        with _translate_errors(operation):
            return await self._client.run_script(script, self._keys(scope, session_id), args)

    def _record(self, session_id: str, fields: dict[bytes, bytes]) -> SessionRecord:
        expires_at = int(fields[b"expires_at"]) if fields.get(b"expires_at") else None
        status: SessionStatus = "active"
        if fields[b"status"] == b"ended":
            status = "ended"
        elif expires_at is not None and self._clock() >= expires_at:
            status = "expired"
        title = fields.get(b"title")
        return SessionRecord(
            id=session_id,
            status=status,
            title=None if title is None else title.decode(),
            message_count=int(fields[b"message_count"]),
            created_at=int(fields[b"created_at"]),
            last_active_at=int(fields[b"last_active_at"]),
            expires_at=expires_at,
            metadata=orjson.loads(fields[b"metadata"]),
            usage={k[len(_USAGE) :].decode(): int(v) for k, v in fields.items() if k.startswith(_USAGE.encode())},
        )


@contextmanager
def _translate_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except (RespError, OSError) as exc:  # ConnectionError and TimeoutError are OSErrors
        raise StoreError(f"redis store: {operation} failed: {exc or type(exc).__name__}") from exc


def _optional(text: str | None) -> str:
    # Lua cannot tell an absent argument from an empty one: "-" is None, "+..." a value.
    return "-" if text is None else "+" + text


def _timestamp(value: int | None) -> str | int:
    return "" if value is None else value


def _encode(messages: Sequence[StoredMessage]) -> list[bytes]:
    for message in messages:
        if b"\n" in message.replay:
            raise ValueError("replay bytes must be compact JSON without a raw newline")
    return [message.replay + b"\n" + message.info for message in messages]


def address_from_url(url: str) -> RespAddress:
    """Where a ``redis://`` / ``rediss://`` URL points, read as redis-py reads it."""
    try:
        options: dict[str, Any] = dict(parse_url(url))
    except ValueError as exc:
        raise ConfigError(f"store: invalid redis URL: {exc}") from exc
    context = None
    if options.get("connection_class") is SSLConnection:
        context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
        if options.get("ssl_cert_reqs") in ("none", "optional"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE if options["ssl_cert_reqs"] == "none" else ssl.CERT_OPTIONAL
    return RespAddress(
        host=options.get("host", "127.0.0.1"),
        port=int(options.get("port", 6379)),
        db=int(options.get("db", 0)),
        username=options.get("username"),
        password=options.get("password"),
        ssl=context,
    )
