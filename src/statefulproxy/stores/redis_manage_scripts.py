"""The Redis store's scripts that manage a session outside its turns: update, clear, end and
delete it, and renew or release a turn's lease. Same KEYS as the turn scripts (redis_scripts.py).
"""

from __future__ import annotations

# ARGV: title ("-" keep, "+<title>"), metadata ("-" keep, "+<json>"), history_window ("-"
# keep, else the field's new value, "" none). -> false | HGETALL
UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if ARGV[1] ~= '-' then redis.call('HSET', KEYS[1], 'title', string.sub(ARGV[1], 2)) end
if ARGV[2] ~= '-' then redis.call('HSET', KEYS[1], 'metadata', string.sub(ARGV[2], 2)) end
if ARGV[3] ~= '-' then redis.call('HSET', KEYS[1], 'history_window', ARGV[3]) end
return redis.call('HGETALL', KEYS[1])
"""

# ARGV: now. Only an active session is cleared. -> false | HGETALL
CLEAR = """
local m = redis.call('HMGET', KEYS[1], 'status', 'expires_at')
if not m[1] then return false end
local expires_at = tonumber(m[2])
if m[1] == 'active' and not (expires_at and tonumber(ARGV[1]) >= expires_at) then
  redis.call('DEL', KEYS[2], KEYS[5], KEYS[6], KEYS[7])
  redis.call('HSET', KEYS[1], 'message_count', 0, 'leading_system', 0, 'id_base', 0)
end
return redis.call('HGETALL', KEYS[1])
"""

END = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'status', 'ended')
return redis.call('HGETALL', KEYS[1])
"""

# The lease is left alone: the turn holding it releases it, or it expires.
DELETE = """
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[5], KEYS[6], KEYS[7])
return existed
"""

# ARGV: token, ttl_ms. Extends the lease only if the token holds it. -> 1 | 0
RENEW_LEASE = """
if redis.call('GET', KEYS[4]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[4], ARGV[2]) end
return 0
"""

# ARGV: token, count ("1": the turn's load did not count it in request_count, and no commit will).
# Drops the lease only if the token holds it. -> 1 | 0
RELEASE_LEASE = """
if ARGV[2] == '1' and redis.call('HEXISTS', KEYS[1], 'status') == 1 then
  redis.call('HINCRBY', KEYS[1], 'request_count', 1)
end
if redis.call('GET', KEYS[4]) == ARGV[1] then return redis.call('DEL', KEYS[4]) end
return 0
"""

LEASES = (RENEW_LEASE, RELEASE_LEASE)
