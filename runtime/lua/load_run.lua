-- Claim a run for one invocation and return what the worker does not have cached.
-- KEYS: run, events, memo, stack, steps, timers, pending
-- ARGV: position, known_len (-1: send the events too), fence_field, now_ms, kind, step_key
-- Returns {code, fence, fn, queue_id, events|false, stack_len, created, first_start, force_plan,
--          key1..keyN, value1..valueN}
-- (first_start is 1 when this invocation is the run's first)
local run = KEYS[1]
local status = redis.call('HGET', run, 'status')
if not status then
  return {'missing'}
end
if TERMINAL[status] then
  return {'done', status}
end
local position = tonumber(ARGV[1])
local len = redis.call('LLEN', KEYS[4])
if ARGV[5] == 'wake' and len == position + 1 and redis.call('LINDEX', KEYS[4], -1) == ARGV[6] then
  -- this wake-up job woke the run already, and its worker died (or lost Redis) before the run
  -- moved on: the job runs again as the re-entry after the sleep
  position = len
elseif ARGV[5] == 'wake' then
  if len ~= position or redis.call('HEXISTS', KEYS[3], ARGV[6]) == 1 then
    return {'stale', len}
  end
  -- a finished sleep memoizes null (msgpack 0xc0)
  redis.call('HSET', KEYS[3], ARGV[6], '\192')
  redis.call('RPUSH', KEYS[4], ARGV[6])
  local name = redis.call('HGET', run, 'sleep_name') or ''
  redis.call('HSET', KEYS[5], ARGV[6] .. ':at', ARGV[4], ARGV[6] .. ':name', name, ARGV[6] .. ':attempts', 1)
  local timer = redis.call('HGET', run, 'timer')
  if timer then
    redis.call('ZREM', KEYS[6], timer)
  end
  redis.call('HDEL', run, 'timer', 'sleep_key', 'sleep_name')
  len = len + 1
elseif ARGV[5] == 'planned' then
  -- a planned (parallel) step: run only while it is pending and unresolved
  if redis.call('SISMEMBER', KEYS[7], ARGV[6]) == 0 or redis.call('HEXISTS', KEYS[3], ARGV[6]) == 1 then
    return {'stale', len}
  end
elseif len ~= position then
  return {'stale', len}
end
local fence = redis.call('HINCRBY', run, ARGV[3], 1)
if status == STATUS_QUEUED or status == STATUS_SLEEPING then
  redis.call('HSET', run, 'status', STATUS_RUNNING)
end
local first = redis.call('HSETNX', run, 'started', ARGV[4])
local ids = redis.call('HMGET', run, 'fn', 'q', 'created', 'force_plan')
local out = {'ok', fence, ids[1], ids[2]}
local known = tonumber(ARGV[2])
if known < 0 then
  out[5] = redis.call('GET', KEYS[2])
  known = 0
else
  out[5] = false
end
out[6] = len
out[7] = ids[3]
out[8] = first
out[9] = ids[4] or '0'
if known < len then
  local new_keys = redis.call('LRANGE', KEYS[4], known, -1)
  local values = redis.call('HMGET', KEYS[3], unpack(new_keys))
  for i = 1, #new_keys do
    out[#out + 1] = new_keys[i]
  end
  for i = 1, #values do
    out[#out + 1] = values[i]
  end
end
return out
