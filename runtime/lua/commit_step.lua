-- Memoize a step's result (first writer wins), then enqueue the next job, atomically.
-- KEYS: run, memo, stack, steps, job, result, queue
-- ARGV: fence_field, fence, key, value, name, attempts, duration_ms, now_ms, position,
--       payload, score, ttl_ms, max_state_bytes, retention_s (the defaults: see run_limits)
-- Returns reply(outcome): 'ok', a refusal, 'cancelled', or 'state_too_large' (the run failed).
count_execution(KEYS[1], KEYS[4], ARGV[3])
local why = refuse(KEYS[1], ARGV[1], ARGV[2])
local cancelled = false
if why == 'done' and redis.call('HGET', KEYS[1], 'status') == 'cancelled' then
  -- a step that was running when its run was cancelled: record its result, run nothing after it
  cancelled = true
elseif why then
  return reply(why)
end
if redis.call('LLEN', KEYS[3]) ~= tonumber(ARGV[9]) then
  return reply('stale')
end
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then
  return reply('duplicate')
end
local now = tonumber(ARGV[8])
local defaults = limits_of(ARGV[13], ARGV[14])
local limits = run_limits(KEYS[1], defaults)
local size = tonumber(redis.call('HGET', KEYS[1], 'state_bytes') or '0') + string.len(ARGV[4])
if size > limits.max_state then
  if cancelled then
    return reply('cancelled')
  end
  return reply(fail_for_state(run_id_of(KEYS[1]), ARGV[3], ARGV[5], size, limits, defaults, now))
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[1], 'state_bytes', size)
redis.call('HSET', KEYS[4], ARGV[3] .. ':name', ARGV[5], ARGV[3] .. ':attempts', ARGV[6],
  ARGV[3] .. ':ms', ARGV[7], ARGV[3] .. ':at', ARGV[8])
if cancelled then
  for _, k in ipairs({KEYS[2], KEYS[3], KEYS[4]}) do
    redis.call('EXPIRE', k, redis.call('TTL', KEYS[1]))
  end
  return reply('cancelled')
end
enqueue(KEYS[5], KEYS[6], KEYS[7], ARGV[10], ARGV[11], ARGV[12])
redis.call('HSET', KEYS[1], 'next_job', job_id_of(KEYS[5]))
return reply('ok')
