"""Reading a Redis session's history: all of it, one page, or where messages are (scripts and replies).

A page is read by range (``LRANGE`` and ``LLEN`` in one script), never the whole list. A message
is found by its id in the session's ``ids`` hash (id -> ordinal; the meta field ``id_base`` is the
ordinal of the first message), which the session scripts keep in step with the list
(redis_scripts.py): one ``HGET`` and one ``LINDEX`` to check it, whatever the history's length.
"""

from __future__ import annotations

from typing import Any

from .base import MessagePage, StoredMessage
from .redis_scripts import ID_LUA

MESSAGES = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('LRANGE', KEYS[2], 0, -1)
"""

# ARGV: start, stop ("": the end), as Python slice bounds. -> false | {length, elements}
MESSAGES_PAGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local len = redis.call('LLEN', KEYS[2])
local function bound(value, default)
  if value == '' then return default end
  local n = tonumber(value)
  if n < 0 then n = math.max(len + n, 0) end
  return math.min(n, len)
end
local first, stop = bound(ARGV[1], 0), bound(ARGV[2], len)
if first >= stop then return {len, {}} end
return {len, redis.call('LRANGE', KEYS[2], first, stop - 1)}
"""

# ARGV: message ids. -> false | {length, position per id (-1: not in the history)}. A session
# from before the id index, or one whose index is out of step (a duplicate id), is numbered anew.
MESSAGE_POSITIONS = (
    ID_LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local len = redis.call('LLEN', KEYS[2])
local function number_all()
  redis.call('DEL', KEYS[7])
  for first = 0, len - 1, 1000 do
    local numbered = {}
    for k, e in ipairs(redis.call('LRANGE', KEYS[2], first, first + 999)) do
      local id = string.match(e, ID)
      if id then
        numbered[#numbered + 1] = id
        numbered[#numbered + 1] = first + k - 1
      end
    end
    if #numbered > 0 then redis.call('HSET', KEYS[7], unpack(numbered)) end
  end
  local pttl = redis.call('PTTL', KEYS[2])
  if pttl > 0 then redis.call('PEXPIRE', KEYS[7], pttl) end
  redis.call('HSET', KEYS[1], 'id_base', 0)
  return 0
end
local base = tonumber(redis.call('HGET', KEYS[1], 'id_base')) or number_all()
-- -> the position, -1 if the id is not listed, nil if the index is out of step
local function find(id)
  local ordinal = redis.call('HGET', KEYS[7], id)
  if not ordinal then return -1 end
  local at = tonumber(ordinal) - base
  local e = at >= 0 and at < len and redis.call('LINDEX', KEYS[2], at)
  if e and string.match(e, ID) == id then return at end
  return nil
end
local found = {len}
for i, id in ipairs(ARGV) do
  local at = find(id)
  if at == nil then
    base = number_all()
    at = find(id) or -1
  end
  found[i + 1] = at
end
return found
"""
)


def stored_messages(elements: list[bytes]) -> list[StoredMessage]:
    """List elements (``replay + b"\\n" + info``) as stored messages."""
    return [StoredMessage(replay, info) for replay, _, info in (element.partition(b"\n") for element in elements)]


def page_args(start: int, stop: int | None) -> tuple[int, int | str]:
    return start, "" if stop is None else stop


def message_page(reply: list[Any]) -> MessagePage:
    total, elements = reply
    return MessagePage(stored_messages(elements), int(total))


def positions(reply: list[Any]) -> tuple[list[int | None], int]:
    total, *found = reply
    return [None if position < 0 else int(position) for position in found], int(total)
