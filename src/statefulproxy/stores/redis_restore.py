"""Writing a whole session back into Redis as it was: ``RedisStore.restore`` (an import).

One script writes the session's meta hash, its message list and its id index in one atomic
step, on the session's ``{h}`` slot: no other command sees it half written. Its own script, so
the turn scripts (redis_scripts.py) stay as they are. As with creating (stores/redis.py), on one
node the same script lists the session in its owner's index and checks the owner's cap; on a
Cluster the index is another node's, and it is written first.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from .base import RestoredSession
from .limits import session_limit_error
from .redis_codec import USAGE, encode, encode_window, translate_errors
from .redis_scripts import ID_LUA, OWNER_LUA
from .resp import Script

# KEYS meta, msgs, window, lease, kept, kept_until, ids[, index, seq]. ARGV: [1] replace "0"/"1",
# [2] ttl_ms, [3] session id, [4] max sessions per owner (0 none), [5] index ttl_ms, [6] how many
# meta field/value arguments follow, those, then the message elements.
# -> 'ok' | 'exists' (not replacing: nothing done) | 'full' (with the index keys: a new session and
# the owner at the cap: nothing done). The lease is left alone, as deleting leaves it.
RESTORE = (
    OWNER_LUA
    + ID_LUA
    + """
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
if KEYS[8] and list_owner(KEYS[8], KEYS[9], ARGV[3], true, ARGV[4], ARGV[5]) < 0 then return 'full' end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[5], KEYS[6], KEYS[7])
local first = 7 + tonumber(ARGV[6])
redis.call('HSET', KEYS[1], unpack(ARGV, 7, first - 1))
local numbered = {}
-- unpack() is bounded by the Lua C stack: push and number in chunks
for start = first, #ARGV, 1000 do
  local stop = math.min(start + 999, #ARGV)
  redis.call('RPUSH', KEYS[2], unpack(ARGV, start, stop))
  for x = start, stop do
    local id = string.match(ARGV[x], ID)
    if id then
      numbered[#numbered + 1] = id
      numbered[#numbered + 1] = x - first
    end
  end
  if #numbered > 0 then
    redis.call('HSET', KEYS[7], unpack(numbered))
    numbered = {}
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[7], ARGV[2])
end
return 'ok'
"""
)
_SCRIPT = Script(RESTORE)


class OwnerIndexParts(Protocol):
    """What a restore uses of the owners' index (stores/redis_index.py)."""

    cap: int
    ttl_ms: int

    async def room_in(self, owner: str) -> float | None: ...

    async def list_new(self, owner: str, session_id: str) -> bool | None: ...

    async def relist(self, owner: str, session_id: str, listed: bool) -> None: ...


class RedisStoreParts(Protocol):
    """The Redis store's own parts that a restore goes through (stores/redis.py)."""

    _client: Any
    _ttl_ms: int
    _joined: bool

    @property
    def _index(self) -> OwnerIndexParts: ...

    def _joined_keys(self, owner: str, session_id: str) -> tuple[str, ...]: ...


def meta_fields(restored: RestoredSession) -> list[Any]:
    """The meta hash of the session, as field/value arguments (the fields of redis_scripts.py)."""
    record = restored.record
    after, limits = record.expires_after, record.limits
    fields: list[Any] = [
        "status", "ended" if record.status == "ended" else "active",
        "created_at", record.created_at,
        "last_active_at", record.last_active_at,
        "metadata", orjson.dumps(record.metadata),
        "expires_at", "" if record.expires_at is None else record.expires_at,
        "anchor", "" if after is None else after.anchor,
        "expires_after", "" if after is None else after.seconds,
        "rpm", "" if limits.max_requests_per_1_minute is None else limits.max_requests_per_1_minute,
        "max_requests", "" if limits.max_requests is None else limits.max_requests,
        "request_count", record.request_count,
        "leading_system", restored.leading_system,
        "message_count", len(restored.messages),
        "namespace", record.namespace or "",
        "history_window", encode_window(record.history_window),
        "id_base", 0,
    ]  # fmt: skip
    if record.title is not None:
        fields += ["title", record.title]
    for name, tokens in record.usage.items():
        fields += [USAGE + name, int(tokens)]
    return fields


async def restore(store: RedisStoreParts, owner: str, restored: RestoredSession, replace: bool) -> bool:
    """Store.restore."""
    session_id, index = restored.record.id, store._index
    fields = meta_fields(restored)
    args = ("1" if replace else "0", store._ttl_ms, session_id, index.cap, index.ttl_ms, len(fields), *fields)
    args += tuple(encode(restored.messages))
    keys, wait = store._joined_keys(owner, session_id), None
    if store._joined:
        with translate_errors("restore"):
            result = await store._client.run_script(_SCRIPT, keys, args)
            if result == b"full" and (wait := await index.room_in(owner)) is None:
                result = await store._client.run_script(_SCRIPT, keys, args)  # some were gone: again
        if result == b"full":
            raise session_limit_error(index.cap, wait or 1)
        return bool(result == b"ok")
    listed = await index.list_new(owner, session_id)
    if listed is None:
        raise session_limit_error(index.cap, await index.room_in(owner) or 1)
    with translate_errors("restore"):
        result = await store._client.run_script(_SCRIPT, keys, args)
    if result != b"ok":  # the id was taken: its session is listed already
        return False
    await index.relist(owner, session_id, listed)
    return True
