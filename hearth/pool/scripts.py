"""The Lua scripts that make every change to pool state atomic in Redis.

Why Lua and not WATCH/MULTI: a lease must pick the best READY record *and* mark it LEASED in one
step with no retry storm under 50 concurrent callers on several hosts; a script runs alone on the
server, so there is nothing to retry and no in-process lock is needed for correctness.

Every script shares one prelude that keeps the secondary indexes in step with the records:

``{P}:names``                   hash   name -> pool (where a record lives)
``{P}:pools``                   set    pools that ever had a record
``{P}:pool:{pool}:records``     hash   name -> record JSON (the source of truth)
``{P}:pool:{pool}:state:{S}``   zset   names in state S, scored by deadline (0 = unknown); the
                                       READY set is what a lease takes the top of
``{P}:pool:{pool}:ready``       list   one entry per record that became READY (wakes lease waiters)
``{P}:pool:{pool}:breaker``     hash   the create-failure breaker
``{P}:cids``                    hash   container_id -> name
``{P}:lease_ids``               hash   lease_id -> name, only while LEASED
``{P}:leases``                  zset   LEASED names scored by lease expiry (finds lapsed leases)
``{P}:fence``                   string fencing-token counter (INCR, global so tokens never repeat)
``{P}:events``                  stream one entry per state change (pool, name, from, to), capped at
                                       about ``EVENTS_MAXLEN``; written by the script that makes the
                                       change, so no reader misses one (``hearth.pool.feed``)

Keys are built inside the scripts from the prefix, which is fine on a single Redis (or a managed
primary); Redis Cluster would need hash tags and declared keys.
"""

from __future__ import annotations

# Entries the transition stream keeps (``MAXLEN ~``: trimmed in whole nodes, so a few more): about a
# megabyte, and minutes of history for a reader that polls every second even under heavy churn.
EVENTS_MAXLEN = 10_000
FORGOTTEN = "forgotten"  # the ``to`` of a record that was deleted (FORGET), not a State

PRELUDE = f"""
local EVENTS_MAXLEN = {EVENTS_MAXLEN}
local FORGOTTEN = '{FORGOTTEN}'
""" + r"""
local P = ARGV[1]
local function pk(pool, suffix) return P .. ':pool:' .. pool .. ':' .. suffix end
local function num(v) if type(v) == 'number' then return v end return nil end
local function str(v) if type(v) == 'string' then return v end return nil end
local function unindex(rec)
  redis.call('ZREM', pk(rec.pool, 'state:' .. rec.state), rec.name)
  local cid = str(rec.container_id)
  if cid then redis.call('HDEL', P .. ':cids', cid) end
  local lid = str(rec.lease_id)
  if lid then redis.call('HDEL', P .. ':lease_ids', lid) end
  redis.call('ZREM', P .. ':leases', rec.name)
end
local function emit(pool, name, from_state, to_state)
  redis.call('XADD', P .. ':events', 'MAXLEN', '~', EVENTS_MAXLEN, '*',
             'pool', pool, 'name', name, 'from', from_state or '', 'to', to_state)
end
local function index(rec, old_state)
  if rec.state ~= old_state then emit(rec.pool, rec.name, old_state, rec.state) end
  redis.call('ZADD', pk(rec.pool, 'state:' .. rec.state), num(rec.deadline) or 0, rec.name)
  local cid = str(rec.container_id)
  if cid then redis.call('HSET', P .. ':cids', cid, rec.name) end
  if rec.state == 'LEASED' then
    local lid = str(rec.lease_id)
    if lid then redis.call('HSET', P .. ':lease_ids', lid, rec.name) end
    redis.call('ZADD', P .. ':leases', num(rec.lease_expires_at) or 0, rec.name)
  end
  if rec.state == 'READY' and old_state ~= 'READY' then
    -- A short, expiring list: waiters only need "something became ready", not a backlog.
    local k = pk(rec.pool, 'ready')
    redis.call('RPUSH', k, '1')
    redis.call('LTRIM', k, -64, -1)
    redis.call('PEXPIRE', k, 60000)
  end
end
local function save(rec)
  redis.call('HSET', pk(rec.pool, 'records'), rec.name, cjson.encode(rec))
end
local function load(name)
  local pool = redis.call('HGET', P .. ':names', name)
  if not pool then return nil end
  local raw = redis.call('HGET', pk(pool, 'records'), name)
  if not raw then return nil end
  return cjson.decode(raw)
end
local function resolve(kind, ref)
  if kind == 'name' then return ref end
  if kind == 'cid' then return redis.call('HGET', P .. ':cids', ref) end
  if kind == 'lease' then return redis.call('HGET', P .. ':lease_ids', ref) end
  -- 'any': a name first, else a container id
  if redis.call('HEXISTS', P .. ':names', ref) == 1 then return ref end
  return redis.call('HGET', P .. ':cids', ref)
end
local function member(csv, value)
  if csv == '' then return true end
  for item in string.gmatch(csv, '[^,]+') do if item == value then return true end end
  return false
end
"""

# ARGV: P, name, pool, record_json. Idempotent: an existing record with that name is returned.
WRITE_INTENT = (
    PRELUDE
    + r"""
local name, pool, raw = ARGV[2], ARGV[3], ARGV[4]
local existing = load(name)
if existing then return {'exists', cjson.encode(existing)} end
local rec = cjson.decode(raw)
redis.call('HSET', P .. ':names', name, pool)
redis.call('SADD', P .. ':pools', pool)
redis.call('HSET', pk(pool, 'records'), name, raw)
index(rec, nil)
return {'ok', raw}
"""
)

# ARGV: P, ref_kind, ref, from_csv ('' = any), to_state ('' = keep), patch_json, now,
#       expect_lease_id ('' = no check), expect_token ('' = no check)
# -> {'ok', json} | {'missing'} | {'conflict', state} | {'stale', state}
TRANSITION = (
    PRELUDE
    + r"""
local kind, ref, from_csv, to_state, patch, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local want_lease, want_token = ARGV[8], ARGV[9]
local name = resolve(kind, ref)
if not name then return {'missing'} end
local rec = load(name)
if not rec then return {'missing'} end
if want_lease ~= '' and str(rec.lease_id) ~= want_lease then return {'stale', rec.state} end
if want_token ~= '' and num(rec.token) ~= tonumber(want_token) then return {'stale', rec.state} end
if not member(from_csv, rec.state) then return {'conflict', rec.state} end
local old_state = rec.state
unindex(rec)
for k, v in pairs(cjson.decode(patch)) do rec[k] = v end
if to_state ~= '' then rec.state = to_state end
rec.updated_at = now
save(rec)
index(rec, old_state)
return {'ok', cjson.encode(rec)}
"""
)

# ARGV: P, pool, now, min_remaining, lease_expires_at, lease_id, holder ('' = none), session_key_hash ('' = none)
# -> record json | false. Takes the READY record with the latest deadline that still has
# min_remaining seconds of life, marks it LEASED with a fresh fencing token.
LEASE = (
    PRELUDE
    + r"""
local pool, now, minrem = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local expires, lease_id, holder, skh = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
local top = redis.call('ZREVRANGEBYSCORE', pk(pool, 'state:READY'), '+inf', tostring(now + minrem), 'LIMIT', 0, 1)
if #top == 0 then return false end
local raw = redis.call('HGET', pk(pool, 'records'), top[1])
if not raw then
  redis.call('ZREM', pk(pool, 'state:READY'), top[1])
  return false
end
local rec = cjson.decode(raw)
unindex(rec)
rec.state = 'LEASED'
rec.lease_id = lease_id
rec.token = redis.call('INCR', P .. ':fence')
rec.lease_count = (num(rec.lease_count) or 0) + 1
rec.lease_expires_at = expires
rec.leased_at = now
rec.updated_at = now
if holder ~= '' then rec.holder = holder else rec.holder = cjson.null end
if skh ~= '' then rec.session_key_hash = skh else rec.session_key_hash = cjson.null end
save(rec)
index(rec, 'READY')
return cjson.encode(rec)
"""
)

# ARGV: P, name, states_csv ('' = any) -> {'ok'} | {'missing'} | {'conflict', state}
FORGET = (
    PRELUDE
    + r"""
local name, states = ARGV[2], ARGV[3]
local rec = load(name)
if not rec then
  redis.call('HDEL', P .. ':names', name)
  return {'missing'}
end
if not member(states, rec.state) then return {'conflict', rec.state} end
unindex(rec)
redis.call('HDEL', pk(rec.pool, 'records'), name)
redis.call('HDEL', P .. ':names', name)
emit(rec.pool, name, rec.state, FORGOTTEN)
return {'ok'}
"""
)

# ARGV: P, pool, now, threshold, window, cooldown, reason -> the breaker hash as a flat list
BREAKER_FAILURE = (
    PRELUDE
    + r"""
local pool, now, threshold, window, cooldown, reason =
  ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local k = pk(pool, 'breaker')
local state = redis.call('HGET', k, 'state') or 'closed'
local failures = tonumber(redis.call('HGET', k, 'failures') or '0')
local first_at = tonumber(redis.call('HGET', k, 'first_at') or '0')
if redis.call('HGET', k, 'permanent') == '1' then
  -- paused for a reason no retry mends: a late temporary failure must not replace that reason
  redis.call('HSET', k, 'failures', failures + 1, 'last_at', now)
  return redis.call('HGETALL', k)
end
if state == 'open' then
  local open_until = tonumber(redis.call('HGET', k, 'open_until') or '0')
  failures = failures + 1
  if now >= open_until then
    -- the half-open probe failed: open again for another cool-down
    redis.call('HSET', k, 'opened_at', now, 'open_until', now + cooldown, 'probe_until', 0)
  end
else
  if failures == 0 or now - first_at > window then
    failures = 1
    first_at = now
  else
    failures = failures + 1
  end
  if failures >= threshold then
    redis.call('HSET', k, 'state', 'open', 'opened_at', now, 'open_until', now + cooldown, 'probe_until', 0)
  end
end
redis.call('HSET', k, 'failures', failures, 'first_at', first_at, 'last_at', now, 'reason', reason)
return redis.call('HGETALL', k)
"""
)

# ARGV: P, pool, now, cooldown -> 1 when a create may go ahead (closed, or the one half-open probe)
BREAKER_ALLOW = (
    PRELUDE
    + r"""
local pool, now, cooldown = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local k = pk(pool, 'breaker')
if (redis.call('HGET', k, 'state') or 'closed') ~= 'open' then return 1 end
if redis.call('HGET', k, 'permanent') == '1' then return 0 end  -- until the planner lifts it
local open_until = tonumber(redis.call('HGET', k, 'open_until') or '0')
if now < open_until then return 0 end
local probe_until = tonumber(redis.call('HGET', k, 'probe_until') or '0')
if now < probe_until then return 0 end
redis.call('HSET', k, 'probe_until', now + cooldown)
return 1
"""
)

# ARGV: P, pool, now, cooldown, reason, permanent (0|1), spec_hash, env (JSON list)
# -> the breaker hash. Opens the breaker at once (no threshold): for a create that failed for a
# reason no retry mends (``permanent``: until the planner lifts it) or that made a container unlike
# its spec (a cool-down, then the usual half-open probe). ``env_retry`` is 0 when the same spec and
# the same missing variables were already lifted once for an environment change that the failing
# worker did not see (the heartbeat has the variable, the worker not): lifting again would churn.
BREAKER_OPEN = (
    PRELUDE
    + r"""
local pool, now, cooldown, reason, permanent, spec_hash, env =
  ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local k = pk(pool, 'breaker')
local failures = tonumber(redis.call('HGET', k, 'failures') or '0') + 1
local env_retry = '1'
if redis.call('HGET', k, 'lifted_for') == spec_hash .. '|' .. env then env_retry = '0' end
redis.call('DEL', k)
local open_until = now + cooldown
if permanent == '1' then open_until = 0 end
redis.call('HSET', k, 'state', 'open', 'failures', failures, 'first_at', now, 'last_at', now,
  'opened_at', now, 'open_until', open_until, 'probe_until', 0, 'reason', reason,
  'permanent', permanent, 'spec_hash', spec_hash, 'env', env, 'env_retry', env_retry)
return redis.call('HGETALL', k)
"""
)

# ARGV: P, pool, opened_at, why -> 1 when the permanent breaker opened at ``opened_at`` was lifted
# (a newer opening is left alone). What it was lifted for stays, so BREAKER_OPEN can tell a change
# the workers did not see.
BREAKER_LIFT = (
    PRELUDE
    + r"""
local pool, opened_at, why = ARGV[2], ARGV[3], ARGV[4]
local k = pk(pool, 'breaker')
if redis.call('HGET', k, 'permanent') ~= '1' then return 0 end
if tonumber(redis.call('HGET', k, 'opened_at') or '-1') ~= tonumber(opened_at) then return 0 end
local lifted_for = ''
if why == 'env' then
  lifted_for = (redis.call('HGET', k, 'spec_hash') or '') .. '|' .. (redis.call('HGET', k, 'env') or '[]')
end
local reason = redis.call('HGET', k, 'reason') or ''
redis.call('DEL', k)
redis.call('HSET', k, 'state', 'closed', 'failures', 0, 'lifted_for', lifted_for, 'lifted_reason', reason)
return 1
"""
)
