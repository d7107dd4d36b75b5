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
``{P}:pool:{pool}:digests``     hash   inputs digest -> READY records holding it (rotation is due
                                       when one other than the pool's current digest counts > 0)
``{P}:pool:{pool}:harvest``     zset   LEASED names scored by their last harvest (or lease) time:
                                       "every N seconds" harvests are read from it, not from records
``{P}:pool:{pool}:intents``     string intents ever written (a plan's provision less those since)
``{P}:pool:{pool}:meter``       hash   metered containers (a container behind the record, not GONE
                                       or EXPIRED) per category (``n:idle|leased|other``), their
                                       container-seconds integrated up to ``mark`` (``acc:*``), the
                                       sum and count of their deadlines (``dsum``, ``dn``), and what
                                       the ticks already billed (``billed:*``, ``billed_at``);
                                       ``v`` says the counters are started (``METER_RECOUNT``)
``{P}:pool:{pool}:ended``       list   ``end,lived`` of each metered container whose life ended
                                       (the tick adds the price's minimum for short lives)
``{P}:cids``                    hash   container_id -> name
``{P}:lease_ids``               hash   lease_id -> name, only while LEASED
``{P}:leases``                  zset   LEASED names scored by lease expiry (finds lapsed leases)
``{P}:fence``                   string fencing-token counter (INCR, global so tokens never repeat)
``{P}:events``                  stream one entry per state change (pool, name, from, to), capped at
                                       about ``EVENTS_MAXLEN``; written by the script that makes the
                                       change, so no reader misses one (``hearth.pool.feed``)

The counters change only inside the scripts that change a record, in the same atomic step, so
they cannot drift from the records; ``METER_RECOUNT`` (a full recount, in Lua) starts them on data
written before they existed and repairs them if a check ever finds them off (``PoolStore.recount``).

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
  if rec.state == 'READY' then
    local dk, dg = pk(rec.pool, 'digests'), str(rec.inputs_digest) or ''
    if redis.call('HINCRBY', dk, dg, -1) <= 0 then redis.call('HDEL', dk, dg) end
  end
  if rec.state == 'LEASED' then redis.call('ZREM', pk(rec.pool, 'harvest'), rec.name) end
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
  if rec.state == 'READY' then redis.call('HINCRBY', pk(rec.pool, 'digests'), str(rec.inputs_digest) or '', 1) end
  if rec.state == 'LEASED' then
    redis.call('ZADD', pk(rec.pool, 'harvest'),
      num(rec.last_harvest_at) or num(rec.leased_at) or num(rec.updated_at) or 0, rec.name)
  end
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
-- Metering: a record's container is billed while it has a container id and is not GONE or
-- EXPIRED, in the category of its state. Counters move only here, when a script changes a record.
local CATS = {'idle', 'leased', 'other'}
local function mcat(rec)
  if not rec or not str(rec.container_id) then return nil end
  local s = rec.state
  if s == 'GONE' or s == 'EXPIRED' then return nil end
  if s == 'READY' then return 'idle' end
  if s == 'LEASED' then return 'leased' end
  return 'other'
end
local function integrate(k, now)
  -- acc:c += n:c * (now - mark): the container-seconds of every category up to now
  local m = redis.call('HMGET', k, 'mark', 'n:idle', 'n:leased', 'n:other')
  local mark = tonumber(m[1])
  if mark and now <= mark then return end
  if mark then
    for i, c in ipairs(CATS) do
      local n = tonumber(m[i + 1] or '0') or 0
      if n ~= 0 then redis.call('HINCRBYFLOAT', k, 'acc:' .. c, n * (now - mark)) end
    end
  end
  redis.call('HSET', k, 'mark', now)
end
local function meter_move(pool, old, new, now)
  local k = pk(pool, 'meter')
  if redis.call('HEXISTS', k, 'v') == 0 then return end  -- not started: METER_RECOUNT starts them
  local oc, nc = mcat(old), mcat(new)
  local od = oc and num(old.deadline) or nil
  local nd = nc and num(new.deadline) or nil
  if oc == nc and od == nd then return end
  integrate(k, now)
  if oc then
    redis.call('HINCRBY', k, 'n:' .. oc, -1)
    if od then
      redis.call('HINCRBYFLOAT', k, 'dsum', -od)
      redis.call('HINCRBY', k, 'dn', -1)
    end
  end
  if nc then
    redis.call('HINCRBY', k, 'n:' .. nc, 1)
    if nd then
      redis.call('HINCRBYFLOAT', k, 'dsum', nd)
      redis.call('HINCRBY', k, 'dn', 1)
    end
  end
  if oc and not nc and new then
    -- A life ended (GONE now, or EXPIRED at its deadline): it was counted up to now, so take back
    -- what lies past its end and was not billed yet; note it for the minimum top-up.
    local e = now
    if new.state == 'EXPIRED' and num(new.deadline) and new.deadline < now then e = new.deadline end
    local billed_at = tonumber(redis.call('HGET', k, 'billed_at') or '') or e
    local back = now - math.max(e, billed_at)
    if back > 0 then redis.call('HINCRBYFLOAT', k, 'acc:' .. oc, -back) end
    local start = num(old.bound_at) or num(old.created_at) or e
    local ek = pk(pool, 'ended')
    redis.call('RPUSH', ek, string.format('%.3f,%.3f', e, math.max(0, e - start)))
    redis.call('LTRIM', ek, -100000, -1)
  end
end
local function raw_of(rec) return cjson.encode(rec) end
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
redis.call('INCR', pk(pool, 'intents'))
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
local before = cjson.decode(raw_of(rec))
unindex(rec)
for k, v in pairs(cjson.decode(patch)) do rec[k] = v end
if to_state ~= '' then rec.state = to_state end
rec.updated_at = now
save(rec)
index(rec, old_state)
meter_move(rec.pool, before, rec, now)
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
local before = cjson.decode(raw)
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
meter_move(pool, before, rec, now)
return cjson.encode(rec)
"""
)

# ARGV: P, name, states_csv ('' = any), now -> {'ok'} | {'missing'} | {'conflict', state}
FORGET = (
    PRELUDE
    + r"""
local name, states, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
local rec = load(name)
if not rec then
  redis.call('HDEL', P .. ':names', name)
  return {'missing'}
end
if not member(states, rec.state) then return {'conflict', rec.state} end
unindex(rec)
if now then meter_move(rec.pool, rec, nil, now) end
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

# ARGV: P, pool, now -> {n_idle, n_leased, n_other, dn, ready_digests...}. Counts every record of
# the pool once (the one O(records) script): starts the counters on data written before they
# existed, or repairs them. The container-seconds so far are integrated with the old counts first.
METER_RECOUNT = (
    PRELUDE
    + r"""
local pool, now = ARGV[2], tonumber(ARGV[3])
local k = pk(pool, 'meter')
if redis.call('HEXISTS', k, 'v') == 1 then integrate(k, now) end
local n = {idle = 0, leased = 0, other = 0}
local dsum, dn = 0, 0
local digests = {}
redis.call('DEL', pk(pool, 'digests'), pk(pool, 'harvest'))
for _, raw in ipairs(redis.call('HVALS', pk(pool, 'records'))) do
  local rec = cjson.decode(raw)
  local c = mcat(rec)
  if c then
    n[c] = n[c] + 1
    if num(rec.deadline) then dsum = dsum + rec.deadline; dn = dn + 1 end
  end
  if rec.state == 'READY' then
    local dg = str(rec.inputs_digest) or ''
    digests[dg] = (digests[dg] or 0) + 1
  end
  if rec.state == 'LEASED' then
    redis.call('ZADD', pk(pool, 'harvest'),
      num(rec.last_harvest_at) or num(rec.leased_at) or num(rec.updated_at) or 0, rec.name)
  end
end
for dg, count in pairs(digests) do redis.call('HSET', pk(pool, 'digests'), dg, count) end
redis.call('HSET', k, 'n:idle', n.idle, 'n:leased', n.leased, 'n:other', n.other, 'dsum', dsum, 'dn', dn, 'v', 1)
if not redis.call('HGET', k, 'mark') then redis.call('HSET', k, 'mark', now) end
return {n.idle, n.leased, n.other, dn}
"""
)

# ARGV: P, pool, now, retention -> {'cold'} | {'old'} | {'ok', previous billed_at or false, d_idle, d_leased,
# d_other, ended...}. What one tick bills: the container-seconds integrated since the previous tick
# (per category) and the lives that ended meanwhile. ``billed_at`` only moves forward, so an old
# tick (a deposed leader's) neither counts a window twice nor reopens one.
METER_ADVANCE = (
    PRELUDE
    + r"""
local pool, now = ARGV[2], tonumber(ARGV[3])
local k = pk(pool, 'meter')
if redis.call('HEXISTS', k, 'v') == 0 then return {'cold'} end
local billed_at = tonumber(redis.call('HGET', k, 'billed_at') or '')
if billed_at and now <= billed_at then return {'old'} end
integrate(k, now)
local out = {'ok', billed_at and tostring(billed_at) or false}
for _, c in ipairs(CATS) do
  local acc = tonumber(redis.call('HGET', k, 'acc:' .. c) or '0') or 0
  local billed = tonumber(redis.call('HGET', k, 'billed:' .. c) or '0') or 0
  local d = acc - billed
  if d < 0 or not billed_at then d = 0 end
  table.insert(out, tostring(d))
  redis.call('HSET', k, 'billed:' .. c, math.max(acc, billed))
end
redis.call('HSET', k, 'billed_at', now)
-- "metered until", as the record-based path keeps it (``CostLedger.tick``): one mark for both
if billed_at then redis.call('SET', P .. ':cost-last:' .. pool, ARGV[3], 'EX', ARGV[4]) end
local ek = pk(pool, 'ended')
for _, e in ipairs(redis.call('LRANGE', ek, 0, -1)) do table.insert(out, e) end
redis.call('DEL', ek)
return out
"""
)

# ARGV: P, pool, now, ready_horizon, leased_horizon, surplus, lapsed_before, harvest_before ('' = none)
# -> {counts of every state (State order), meter hash flat, digests flat, intents written, drain
#     (0|1), breaker hash flat, record JSON...}.
# What one steady tick needs of a pool, in one consistent step: the counts, and only the records
# that something may be due for: every record outside READY and LEASED (in flight, failed,
# expired, gone: few), READY ones whose deadline is within ``ready_horizon`` or among the
# ``surplus`` with the least life, LEASED ones within ``leased_horizon``, lapsed, or due a harvest.
TICK_VIEW = (
    PRELUDE
    + r"""
local pool, now = ARGV[2], tonumber(ARGV[3])
local ready_h, leased_h, surplus = ARGV[4], ARGV[5], tonumber(ARGV[6])
local lapsed_before, harvest_before = ARGV[7], ARGV[8]
local STATES = {'CREATING', 'SEEDING', 'READY', 'LEASED', 'HARVESTING', 'DELETING', 'GONE', 'EXPIRED', 'FAILED'}
local out, names, seen = {}, {}, {}
local function add(list)
  for _, n in ipairs(list) do
    if not seen[n] then seen[n] = true; table.insert(names, n) end
  end
end
for _, st in ipairs(STATES) do
  local key = pk(pool, 'state:' .. st)
  table.insert(out, redis.call('ZCARD', key))
  if st ~= 'READY' and st ~= 'LEASED' then add(redis.call('ZRANGE', key, 0, -1)) end
end
local rk = pk(pool, 'state:READY')
local due = redis.call('ZRANGEBYSCORE', rk, '-inf', ready_h)
add(due)
if surplus > #due then add(redis.call('ZRANGE', rk, 0, surplus - 1)) end
add(redis.call('ZRANGEBYSCORE', pk(pool, 'state:LEASED'), '-inf', leased_h))
for _, n in ipairs(redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', lapsed_before)) do
  if redis.call('HGET', P .. ':names', n) == pool then add({n}) end
end
if harvest_before ~= '' then add(redis.call('ZRANGEBYSCORE', pk(pool, 'harvest'), '-inf', harvest_before)) end
table.insert(out, redis.call('HGETALL', pk(pool, 'meter')))
table.insert(out, redis.call('HGETALL', pk(pool, 'digests')))
table.insert(out, tonumber(redis.call('GET', pk(pool, 'intents')) or '0'))
table.insert(out, redis.call('EXISTS', pk(pool, 'drain')))
table.insert(out, redis.call('HGETALL', pk(pool, 'breaker')))
for i = 1, #names, 1000 do  -- unpack has a limit: read in slices
  local slice = {unpack(names, i, math.min(i + 999, #names))}
  for _, raw in ipairs(redis.call('HMGET', pk(pool, 'records'), unpack(slice))) do
    if raw then table.insert(out, raw) end
  end
end
return out
"""
)

# ARGV: P, name -> the record's JSON, or nil. ``PoolStore.get`` in one round trip instead of two (the
# name's pool, then its record): a provision reads its record first, once per container of a fill.
GET_RECORD = r"""
local P = ARGV[1]
local pool = redis.call('HGET', P .. ':names', ARGV[2])
if not pool then return false end
return redis.call('HGET', P .. ':pool:' .. pool .. ':records', ARGV[2])
"""
