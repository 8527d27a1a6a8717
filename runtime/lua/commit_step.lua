-- Memoize a step's result (first writer wins), then enqueue the next job, atomically.
-- KEYS: run, memo, stack, steps, job, result, queue
-- ARGV: the fields of CommitStepArgs (runtime/script_args.py), read by name as ARG.<field>
-- Returns reply(outcome): 'ok', a refusal, 'cancelled', or 'state_too_large' (the run failed); or,
-- when it ended the caller's job, {'ok', {}, 1} and, when it handed the caller the next job, that
-- job's id, try, fence and force_plan flag after it.
count_execution(KEYS[1], KEYS[4], ARG.key)
local why = refuse(KEYS[1], ARG.fence_field, ARG.fence)
local cancelled = false
if why == 'done' and redis.call('HGET', KEYS[1], 'status') == STATUS_CANCELLED then
  -- a step that was running when its run was cancelled: record its result, run nothing after it
  cancelled = true
elseif why then
  return reply(why)
end
if redis.call('LLEN', KEYS[3]) ~= tonumber(ARG.position) then
  return reply('stale')
end
if redis.call('HEXISTS', KEYS[2], ARG.key) == 1 then
  return reply('duplicate')
end
local now = tonumber(ARG.now_ms)
local defaults = limits_of(ARG.max_state_bytes, ARG.retention_s)
local limits = run_limits(KEYS[1], defaults)
local size = tonumber(redis.call('HGET', KEYS[1], 'state_bytes') or '0') + string.len(ARG.value)
if size > limits.max_state then
  if cancelled then
    return reply('cancelled')
  end
  return reply(fail_for_state(run_id_of(KEYS[1]), ARG.key, ARG.name, size, limits, defaults, now))
end
redis.call('HSET', KEYS[2], ARG.key, ARG.value)
redis.call('RPUSH', KEYS[3], ARG.key)
redis.call('HSET', KEYS[1], 'state_bytes', size)
redis.call('HSET', KEYS[4], ARG.key .. ':name', ARG.name, ARG.key .. ':attempts', ARG.attempts,
  ARG.key .. ':ms', ARG.duration_ms, ARG.key .. ':at', ARG.now_ms)
if cancelled then
  for _, k in ipairs({KEYS[2], KEYS[3], KEYS[4]}) do
    redis.call('EXPIRE', k, redis.call('TTL', KEYS[1]))
  end
  return reply('cancelled')
end
local next_id = job_id_of(KEYS[5])
local added = put_job(KEYS[5], KEYS[6], KEYS[7], ARG.payload, ARG.score, ARG.ttl_ms)
redis.call('HSET', KEYS[1], 'next_job', next_id)
-- The job that ran the step is done; the run's next job may go straight to the same worker: one
-- round trip from this step's result to the next step's start, with no poll, claim or load.
local ended = ARG.job_id ~= '' and end_job(KEYS[7], ARG.job_id, ARG.lease_token)
if ended and added == 1 and ARG.hand_off == '1' then
  local try = take_job(KEYS[7], next_id, ARG.lease_token, ARG.lease_ms, now)
  local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
  return {'ok', {}, 1, next_id, try, fence, redis.call('HGET', KEYS[1], 'force_plan') or '0'}
end
if added == 1 then
  signal_queue(KEYS[7], ARG.score, ARG.now_ms)
end
if ended then
  return {'ok', {}, 1}
end
return reply('ok')
