-- Flow control of run starts: rate limit, idempotency, singleton and throttle (issue 11), put in
-- front of create_run.lua by runtime/scripts.py. runtime/flow_starts.py evaluates each key for the
-- event and sends one check per option the function declares (``StartChecks``): its kind, its keys
-- (built by keys.flow_start with the new run's shard tag) and its arguments.
-- Each check, as KEYS / ARGV:
--   rate:      rate, rate_n / 'rate', limit, period_ms, width_ms, shown period ('1m'), shown key
--   idem:      idem         / 'idem', ttl_s, shown key
--   singleton: singleton    / 'singleton', mode ('skip' or 'cancel'), shown key
--   throttle:  throttle     / 'throttle', limit, period_ms, burst, shown key
-- A run is first checked (start_refusal: nothing charged), then, when it is created, charged
-- (start_flow): a start that is skipped charges no limit.

-- The checks at keys[k..], args[a..]; returns them and the positions after them.
local function flow_checks(keys, k, args, a, n)
  local checks = {}
  for i = 1, n do
    local kind = args[a]
    if kind == 'rate' then
      checks[i] = {kind = kind, key = keys[k], total = keys[k + 1], limit = tonumber(args[a + 1]),
        period = tonumber(args[a + 2]), width = tonumber(args[a + 3]), per = args[a + 4], shown = args[a + 5]}
      k, a = k + 2, a + 6
    elseif kind == 'throttle' then
      checks[i] = {kind = kind, key = keys[k], limit = tonumber(args[a + 1]), period = tonumber(args[a + 2]),
        burst = tonumber(args[a + 3]), shown = args[a + 4]}
      k, a = k + 1, a + 5
    elseif kind == 'idem' or kind == 'singleton' then
      checks[i] = {kind = kind, key = keys[k], arg = args[a + 1], shown = args[a + 2]}
      k, a = k + 1, a + 3
    else
      error('create_run: unknown flow check ' .. tostring(kind))
    end
  end
  return checks, k, a
end

-- ' (key <value>)' when the limit has a key expression, for the reasons people read.
local function key_note(shown)
  if shown == '' then
    return ''
  end
  return ' (key ' .. shown .. ')'
end

-- The rate limit is a sliding window: at most ``limit`` starts in any ``period``. Starts are counted
-- in buckets of ``width`` ms (a hundredth of the period), newest first in a list of
-- '<bucket start>:<count>', their total beside it. A bucket counts while any of it lies in the
-- window, so a start is freed at most one bucket (1% of the period) later than exactly ``period``
-- after it, never earlier: the bound holds in every window. Memory: at most min(limit, 101) buckets
-- per key value, gone ``period`` after its last start.
local function rate_total_of(c)
  local total = 0
  for _, entry in ipairs(redis.call('LRANGE', c.key, 0, -1)) do
    total = total + tonumber(string.match(entry, ':(%d+)$') or '0')
  end
  return total
end

-- How many starts the window holds now, after dropping the buckets that left it.
local function rate_used(c, now)
  local raw = redis.call('GET', c.total)
  local n = tonumber(raw or '')
  if not n then
    n = rate_total_of(c) -- the total went missing (it expires with the list): count again
  end
  local horizon = now - c.period
  local dropped = false
  while true do
    local tail = redis.call('LINDEX', c.key, -1)
    if not tail then
      n = 0
      break
    end
    local bucket, count = string.match(tail, '^(%d+):(%d+)$')
    if bucket and tonumber(bucket) + c.width > horizon then
      break
    end
    redis.call('RPOP', c.key)
    n = n - tonumber(count or '0')
    dropped = true
  end
  if n < 0 then
    n = rate_total_of(c)
  end
  if dropped or not raw then
    if n > 0 then
      redis.call('SET', c.total, n, 'PX', c.period + c.width)
    else
      redis.call('DEL', c.total, c.key)
    end
  end
  return n
end

local function rate_charge(c, now)
  local bucket = now - now % c.width
  local head = redis.call('LINDEX', c.key, 0)
  local head_bucket, head_count
  if head then
    head_bucket, head_count = string.match(head, '^(%d+):(%d+)$')
  end
  if head_bucket and tonumber(head_bucket) == bucket then
    redis.call('LSET', c.key, 0, bucket .. ':' .. (tonumber(head_count) + 1))
  else
    redis.call('LPUSH', c.key, bucket .. ':1')
  end
  redis.call('INCR', c.total)
  redis.call('PEXPIRE', c.key, c.period + c.width)
  redis.call('PEXPIRE', c.total, c.period + c.width)
end

-- The run holding a singleton key, while it has not ended (a lock naming an ended or expired run
-- is free: its end released it, or should have).
local function singleton_holder(key)
  local holder = redis.call('GET', key)
  if holder then
    local status = redis.call('HGET', key_run(holder), 'status')
    if status and not TERMINAL[status] then
      return holder
    end
  end
  return nil
end

-- Why the run may not start (nil: it may). Charges nothing.
local function start_refusal(checks, now)
  for _, c in ipairs(checks) do
    if c.kind == 'idem' then
      local holder = redis.call('GET', c.key)
      if holder then
        return 'idempotent duplicate of run ' .. holder .. key_note(c.shown)
      end
    elseif c.kind == 'rate' then
      if rate_used(c, now) >= c.limit then
        return 'rate limited: ' .. c.limit .. ' runs per ' .. c.per .. key_note(c.shown)
      end
    elseif c.kind == 'singleton' and c.arg == 'skip' then
      local holder = singleton_holder(c.key)
      if holder then
        return 'singleton: run ' .. holder .. ' is active' .. key_note(c.shown)
      end
    end
  end
  return nil
end

-- Cancel ``old`` (singleton mode cancel) as cancel_run.lua cancels a run; its end releases the key.
local function cancel_replaced(old, new, now, defaults)
  local run = key_run(old)
  local reason = 'singleton: replaced by ' .. new
  local blob = cmsgpack.pack({name = 'Cancelled', message = reason, stack = ''})
  set_status(old, STATUS_CANCELLED)
  redis.call('HSET', run, 'error', blob, 'ended', now, 'reason', reason)
  close_run(old, now, run_limits(run, defaults).retention)
  notify_parent(run, 'error', blob, now, defaults)
end

-- Charge the limits for the run being created (its record written). Returns when its first job is
-- due (a throttle may put it later) and the run a singleton in cancel mode replaced (or nil).
local function start_flow(checks, run_id, now, defaults)
  local run = key_run(run_id)
  local due, replaced = now, nil
  for _, c in ipairs(checks) do
    if c.kind == 'idem' then
      redis.call('SET', c.key, run_id, 'EX', c.arg)
    elseif c.kind == 'rate' then
      rate_charge(c, now)
    elseif c.kind == 'singleton' then
      local holder = singleton_holder(c.key)
      if holder then -- mode cancel (skip refused the start)
        cancel_replaced(holder, run_id, now, defaults)
        replaced = holder
      end
      redis.call('SET', c.key, run_id)
      redis.call('HSET', run, 'singleton', c.key) -- close_run releases it (see close_run)
    elseif c.kind == 'throttle' then
      -- GCRA: one start per T = period / limit; ``burst`` starts may go together (tolerance
      -- (burst - 1) T). The key holds the theoretical arrival time; a run starts at the earliest
      -- time it conforms, in the order runs were created (FIFO), and nothing is dropped.
      local interval = c.period / c.limit
      local tat = tonumber(redis.call('GET', c.key) or '') or now
      if tat < now then
        tat = now
      end
      local at = math.max(now, math.ceil(tat - (c.burst - 1) * interval))
      local next_tat = tat + interval
      redis.call('SET', c.key, string.format('%.17g', next_tat), 'PX', math.ceil(next_tat - now) + 1) -- exact: no start early
      if at > due then
        due = at
        redis.call('HSET', run, 'held', 'throttled' .. key_note(c.shown), 'held_until', at)
      end
    end
  end
  return due, replaced
end
