"""The Redis store's Lua scripts, as source text (stores/redis.py runs them).

Session scripts take KEYS meta (hash), msgs (list), window (sorted set of the admitted
requests of the last minute), lease (string: the holding turn's token, always with a
PX TTL), kept (hash: idempotency key -> kept reply), kept_until (sorted set: each kept
key scored by the unix ms it expires at) and ids (hash: message id -> ordinal), all under one
``{h}`` hash tag. ``now`` is unix seconds from the proxy's clock, ``now_ms`` the same instant
in milliseconds. Meta fields: status, title, created_at, last_active_at, expires_at ("" none),
anchor ("", "created_at", "last_active_at"), expires_after (seconds), rpm and max_requests
("" none), request_count, metadata (JSON), leading_system, message_count, namespace ("" none),
history_window ("<max_messages>,<max_tokens>", "" none), id_base (the ordinal of the first
message) and "u:<name>" usage. Sessions written before a field existed lack it: every read
tolerates that (one without id_base has its ids numbered when a page first looks one up).

LOAD, COMMIT and CREATE also take the owner's index and seq keys (KEYS[8], KEYS[9]) when
Redis is one node (or Sentinel's master), where a script may touch keys of two hash tags:
then they check the owner's session cap, list a new session and refresh the index's TTL in
the same step. On a Cluster the index is another node's: stores/redis_index.py does it.
The history's paged reads are in stores/redis_history.py.
"""

from __future__ import annotations

# A session's keys share one TTL, refreshed by a turn's load and commit only once it has run down
# by a thousandth of itself (at least 1 s, at most 60 s): most turns then cost one PTTL, not three
# or four PEXPIREs, and a session expires at most that much before session_ttl after its last turn.
_REFRESH = """
local function stale(ttl_ms)
  ttl_ms = tonumber(ttl_ms)
  local slack = math.min(60000, math.max(1000, math.floor(ttl_ms / 1000)))
  return ttl_ms > 0 and redis.call('PTTL', KEYS[1]) < ttl_ms - slack
end
local function refresh(ttl_ms, limited)
  if tonumber(ttl_ms) > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl_ms)
    redis.call('PEXPIRE', KEYS[2], ttl_ms)
    redis.call('PEXPIRE', KEYS[7], ttl_ms)
    if limited then redis.call('PEXPIRE', KEYS[3], ttl_ms) end
  end
end
"""


def index_margin_ms(session_ttl_ms: int) -> int:
    """How long an owner's index outlives its sessions: a tenth of their TTL, within 1 s..60 s.

    The index's TTL is refreshed only once it has used up about half of this margin (touch_owner),
    so an owner's turns cost one PTTL rather than two PEXPIREs, and the index still outlives every
    session whose TTL was set since: ttl/22 of the index's TTL is at most half the margin.
    """
    return min(60_000, max(1_000, session_ttl_ms // 10))


# The owner's index: KEYS index (sorted set of session ids, scored by INCR of seq) and seq, both
# kept as long as the owner's newest session may live (index ttl_ms: the session TTL and a margin).
# list_owner: lists sid at the newest position (force: also when it is listed already). -> 1
# listed now, 0 listed already (not forced), -1 nothing done: the owner has cap sessions (0: no cap)
OWNER_LUA = """
local function touch_owner(index, seq, ttl_ms)
  ttl_ms = tonumber(ttl_ms)
  if ttl_ms > 0 and redis.call('PTTL', index) < ttl_ms - math.min(30000, math.floor(ttl_ms / 22)) then
    redis.call('PEXPIRE', index, ttl_ms)
    redis.call('PEXPIRE', seq, ttl_ms)
  end
end
local function list_owner(index, seq, sid, force, cap, ttl_ms)
  local listed = redis.call('ZSCORE', index, sid)
  if listed and not force then
    touch_owner(index, seq, ttl_ms)
    return 0
  end
  if not listed and tonumber(cap) > 0 and redis.call('ZCARD', index) >= tonumber(cap) then return -1 end
  redis.call('ZADD', index, redis.call('INCR', seq), sid)
  touch_owner(index, seq, ttl_ms)
  return 1
end
"""

# A message's id starts its info document, right after the replay's one newline.
ID_LUA = """local ID = '\\n{"id":"([^"]+)"'
"""

# number_ids: the ids of ARGV[first..last] get ordinals from `ordinal` up, in KEYS[7].
_NUMBER = (
    ID_LUA
    + """
local function number_ids(first, last, ordinal)
  local numbered, wrote = {}, false
  for x = first, last do
    local id = string.match(ARGV[x], ID)
    if id then
      numbered[#numbered + 1] = id
      numbered[#numbered + 1] = ordinal + x - first
    end
    if #numbered >= 1000 or (x == last and #numbered > 0) then
      redis.call('HSET', KEYS[7], unpack(numbered))
      numbered = {}
      wrote = true
    end
  end
  return wrote
end
"""
)

# ARGV[i..i+8]: title ("-" none, "+<title>"), metadata, expires_at, anchor, expires_after,
# rpm, max_requests, namespace, history_window. Leftover list and window keys of a dead
# session are stale: drop them.
_CREATE_META = """
local function create_meta(now, i, requests)
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[5], KEYS[6], KEYS[7])
  redis.call('HSET', KEYS[1], 'status', 'active', 'created_at', now, 'last_active_at', now,
    'metadata', ARGV[i + 1], 'expires_at', ARGV[i + 2], 'anchor', ARGV[i + 3], 'expires_after', ARGV[i + 4],
    'rpm', ARGV[i + 5], 'max_requests', ARGV[i + 6], 'request_count', requests, 'leading_system', 0,
    'message_count', 0,
    'namespace', ARGV[i + 7], 'history_window', ARGV[i + 8], 'id_base', 0)
  if ARGV[i] ~= '-' then redis.call('HSET', KEYS[1], 'title', string.sub(ARGV[i], 2)) end
end
"""

# unpack() is bounded by the Lua C stack: push in chunks.
_APPEND = """
local function append(first)
  while first <= #ARGV do
    local stop = math.min(first + 999, #ARGV)
    redis.call('RPUSH', KEYS[2], unpack(ARGV, first, stop))
    first = stop + 1
  end
end
"""

# ARGV: now, now_ms, ttl_ms, kept key ("" none), session id, max sessions per owner (0 none),
# index ttl_ms[, lease token, lease ttl_ms]. -> false |
# {status, leading_system, messages, history_window ("" none)} |
# refused: {status, 0, {}, retry_after, limited_by} |
# {'kept', status, value} (nothing else done) | 'busy' (another token holds the lease: nothing
# done) | 'full' (with the index keys: absent, leasing, and the owner at the cap: nothing done).
# A session without limits skips all limit work. The lease is taken for an absent
# session (its first turn) and for an admitted active one, never otherwise: a refusal drops the
# token's own lease.
_LOAD = (
    _REFRESH
    + OWNER_LUA
    + """
local m = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'leading_system', 'rpm', 'max_requests',
  'history_window')
local now, expires_at = tonumber(ARGV[1]), tonumber(m[2])
if m[1] == 'active' and expires_at and now >= expires_at then m[1] = 'expired' end
if m[1] and ARGV[4] ~= '' then
  local until_ms = redis.call('ZSCORE', KEYS[6], ARGV[4])
  if until_ms and tonumber(until_ms) > tonumber(ARGV[2]) then
    return {'kept', m[1], redis.call('HGET', KEYS[5], ARGV[4])}
  end
end

local leasing, holder = #ARGV > 7, false
if leasing then
  holder = redis.call('GET', KEYS[4])
  if holder and holder ~= ARGV[8] then return 'busy' end
end
local function take_lease()
  if leasing then redis.call('SET', KEYS[4], ARGV[8], 'PX', ARGV[9]) end
end
-- a refused turn holds no lease, also one its turn's transaction took (stores/redis_load.py)
local function refuse(result)
  if holder then redis.call('DEL', KEYS[4]) end
  return result
end

if not m[1] then
  local cap = tonumber(ARGV[6])
  if leasing and KEYS[8] and cap > 0 and not redis.call('ZSCORE', KEYS[8], ARGV[5])
      and redis.call('ZCARD', KEYS[8]) >= cap then
    return refuse('full')
  end
  take_lease()
  return false
end
if m[1] ~= 'active' then return refuse({m[1], m[3], HISTORY, m[6] or ''}) end

local rpm, max_requests = tonumber(m[4]), tonumber(m[5])
if max_requests then
  local count = tonumber(redis.call('HGET', KEYS[1], 'request_count')) or 0
  if count >= max_requests then
    -- the cap holds until the session expires or is removed for inactivity
    local wait = 86400
    if expires_at then
      wait = expires_at - now
    else
      local pttl = redis.call('PTTL', KEYS[1])
      if pttl > 0 then wait = math.ceil(pttl / 1000) end
    end
    return refuse({m[1], 0, {}, math.max(wait, 1), 'max_requests'})
  end
end
local now_ms = tonumber(ARGV[2])
local window_made = false
if rpm then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms - 60000)
  local admitted = redis.call('ZCARD', KEYS[3])
  window_made = admitted == 0
  if admitted >= rpm then
    local oldest = tonumber(redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2])
    return refuse({m[1], 0, {}, math.max(math.ceil((oldest + 60000 - now_ms) / 1000), 1), 'max_requests_per_1_minute'})
  end
end
local count = redis.call('HINCRBY', KEYS[1], 'request_count', 1)
-- the count is unique per session: requests in one millisecond stay separate members
if rpm then redis.call('ZADD', KEYS[3], ARGV[2], count) end
if stale(ARGV[3]) then
  refresh(ARGV[3], rpm)
  if KEYS[8] then touch_owner(KEYS[8], KEYS[9], ARGV[7]) end
elseif window_made and tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
take_lease()
return {m[1], m[3], HISTORY, m[6] or ''}
"""
)

# HISTORY is where the history is read: inside the script (a Cluster, Sentinel), or by a plain
# LRANGE right after it in the same MULTI (one node: half the Redis CPU for a long history).
LOAD = _LOAD.replace("HISTORY", "redis.call('LRANGE', KEYS[2], 0, -1)")
LOAD_WITHOUT_HISTORY = _LOAD.replace("HISTORY", "{}")

# ARGV: [1] now, [2] ttl_ms, [3] drop_leading, [4] tail_leading_system, [5] title_hint
# ("-"/"+t"), [6] create: "0" no, else 1 + the new session's request_count, [7..15] create
# fields, [16] lease token ("-"/"+token"), [17] kept key ("-" none), [18] kept value, [19] now_ms,
# [20] kept ttl_ms, [21] session id, [22] max sessions per owner (0 none), [23] index ttl_ms,
# [24] usage pair count, [25] flags (1: the load left this request to the commit to count in
# request_count; 2: it found the TTLs fresh enough to need no refresh yet), usage name/value
# pairs, head count, head elements, tail elements.
# -> ok | new | missing | ended | expired | limited (with the index keys: absent, and the owner
# at the cap: nothing written). Whatever the result, the lease is released if the
# token still holds it; a turn that lost its lease is still written (it happened), but the
# lease of the turn that took it over is left alone. The reply is kept only with a written
# turn; the kept keys expire with their newest entry, and never after the session would.
COMMIT = (
    _REFRESH
    + OWNER_LUA
    + _NUMBER
    + _CREATE_META
    + _APPEND
    + """
local meta, msgs, now = KEYS[1], KEYS[2], ARGV[1]
local function done(result)
  if ARGV[16] ~= '-' and redis.call('GET', KEYS[4]) == string.sub(ARGV[16], 2) then redis.call('DEL', KEYS[4]) end
  return result
end
local i = 26 + 2 * tonumber(ARGV[24])
local fields = {'status', 'expires_at', 'anchor', 'expires_after', 'rpm', 'leading_system', 'id_base', 'message_count',
  'request_count'}
for j = 26, i - 1, 2 do fields[#fields + 1] = ARGV[j] end
local m = redis.call('HMGET', meta, unpack(fields))
local created = false
if not m[1] then
  if ARGV[6] == '0' then return done('missing') end
  if KEYS[8] and list_owner(KEYS[8], KEYS[9], ARGV[21], true, ARGV[22], ARGV[23]) < 0 then
    return done('limited')
  end
  create_meta(now, 7, tonumber(ARGV[6]) - 1)
  m = {'active', ARGV[9], ARGV[10], ARGV[11], ARGV[12], 0, 0, 0, tonumber(ARGV[6]) - 1}
  created = true
elseif m[1] == 'ended' then
  return done('ended')
else
  local expires_at = tonumber(m[2])
  if expires_at and tonumber(now) >= expires_at then return done('expired') end
end

-- The meta fields this turn sets, in one HSET at the end. Usage totals are summed here; one past
-- 2^53 (exact in Lua's doubles) goes by HINCRBY, first: a script that fails midway keeps what it
-- wrote, so the one write that can fail (HINCRBY overflow) comes before the history.
local set = {'last_active_at', now}
local flags = tonumber(ARGV[25])
if flags % 2 == 1 then
  set[3], set[4] = 'request_count', (tonumber(m[9]) or 0) + 1
end
for j = 26, i - 1, 2 do
  local total = (tonumber(m[10 + (j - 26) / 2]) or 0) + tonumber(ARGV[j + 1])
  if math.abs(total) < 9007199254740992 then
    set[#set + 1], set[#set + 2] = ARGV[j], total
  else
    redis.call('HINCRBY', meta, ARGV[j], ARGV[j + 1])
  end
end

-- message_count is the list's length; a session from before that field asks the list
local len = tonumber(m[8]) or redis.call('LLEN', msgs)
local drop = tonumber(ARGV[3])  -- negative: DROP_ALL
if drop < 0 or drop > len then drop = len end
local rest_len = len - drop
local rest_lead = math.max((tonumber(m[6]) or 0) - drop, 0)
-- nil: a session from before the id index, numbered when a page first looks an id up
local base = tonumber(m[7])
if rest_len == 0 then
  redis.call('DEL', msgs, KEYS[7])
  base = base and 0
elseif drop > 0 then
  if base then
    for first = 0, drop - 1, 1000 do
      for _, e in ipairs(redis.call('LRANGE', msgs, first, math.min(first + 999, drop - 1))) do
        local id = string.match(e, ID)
        if id then redis.call('HDEL', KEYS[7], id) end
      end
    end
    base = base + drop
  end
  redis.call('LTRIM', msgs, drop, -1)
end

local n_head = tonumber(ARGV[i])
local head_first, tail_first = i + 1, i + 1 + n_head
-- The head goes in front, so its chunks are pushed last-first, each reversed.
local last = tail_first - 1
while last >= head_first do
  local first = math.max(last - 999, head_first)
  local chunk = {}
  for x = last, first, -1 do chunk[#chunk + 1] = ARGV[x] end
  redis.call('LPUSH', msgs, unpack(chunk))
  last = first - 1
end
append(tail_first)
local numbered = false
if base then
  base = base - n_head
  numbered = number_ids(head_first, tail_first - 1, base)
  numbered = number_ids(tail_first, #ARGV, base + n_head + rest_len) or numbered
end

local lead = n_head + rest_lead
if rest_lead == rest_len then lead = lead + tonumber(ARGV[4]) end
set[#set + 1], set[#set + 2] = 'leading_system', lead
set[#set + 1], set[#set + 2] = 'message_count', n_head + rest_len + (#ARGV - tail_first + 1)
if base then set[#set + 1], set[#set + 2] = 'id_base', base end
if m[3] == 'last_active_at' then set[#set + 1], set[#set + 2] = 'expires_at', tonumber(now) + tonumber(m[4]) end
redis.call('HSET', meta, unpack(set))
if ARGV[5] ~= '-' and redis.call('HEXISTS', meta, 'title') == 0 then
  redis.call('HSET', meta, 'title', string.sub(ARGV[5], 2))
end
-- Mostly this turn's load found every TTL fresh (or refreshed it): then only keys made here need one.
local ttl_ms = tonumber(ARGV[2])
if created or (flags < 2 and stale(ttl_ms)) then
  refresh(ttl_ms, m[5] and m[5] ~= '')
  if KEYS[8] and not created then touch_owner(KEYS[8], KEYS[9], ARGV[23]) end
elseif ttl_ms > 0 then
  -- a history that was empty had no list and no id index: this commit made them
  if rest_len == 0 then
    redis.call('PEXPIRE', msgs, ttl_ms)
    if numbered then redis.call('PEXPIRE', KEYS[7], ttl_ms) end
  end
end
if ARGV[17] ~= '-' then
  local now_ms, kept_ms = tonumber(ARGV[19]), tonumber(ARGV[20])
  local gone = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now_ms)
  if #gone > 0 then
    redis.call('HDEL', KEYS[5], unpack(gone))
    redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now_ms)
  end
  redis.call('HSET', KEYS[5], ARGV[17], ARGV[18])
  redis.call('ZADD', KEYS[6], now_ms + kept_ms, ARGV[17])
  local ttl_ms = tonumber(ARGV[2])
  if ttl_ms > 0 and ttl_ms < kept_ms then kept_ms = ttl_ms end
  redis.call('PEXPIRE', KEYS[5], kept_ms)
  redis.call('PEXPIRE', KEYS[6], kept_ms)
end
if created then return done('new') end
return done('ok')
"""
)

# ARGV: [1] now, [2] ttl_ms, [3..11] create fields, [12] session id, [13] max sessions per
# owner (0 none), [14] index ttl_ms, [15] leading_system, messages.
# -> false (the id is taken) | 'full' (with the index keys: the owner is at the cap) | HGETALL
CREATE = (
    _REFRESH
    + OWNER_LUA
    + _NUMBER
    + _CREATE_META
    + _APPEND
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
if KEYS[8] and list_owner(KEYS[8], KEYS[9], ARGV[12], true, ARGV[13], ARGV[14]) < 0 then return 'full' end
create_meta(ARGV[1], 3, 0)
append(16)
number_ids(16, #ARGV, 0)
redis.call('HSET', KEYS[1], 'leading_system', ARGV[15], 'message_count', #ARGV - 15)
refresh(ARGV[2], false)
return redis.call('HGETALL', KEYS[1])
"""
)
