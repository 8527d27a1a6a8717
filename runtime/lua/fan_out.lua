-- Record the new steps a function reported together (parallel steps, a wait, an invoke), enqueue the
-- jobs that will resolve them and the job that will run once they all have (the join).
-- KEYS: run, stack, pending, steps, jobs, queue, then per op that waits its wait keys (2 or 3: see
--       register_wait_from in the prelude); the jobs are named by the ids in ARGV
-- ARGV: fence_field, fence, position, join_id, join_payload, now_ms, status, n_ops,
--       then per op (8, or 12 with a wait): key, name, job_id, payload, score, start_job_id,
--       start_payload (a job due now besides the step's own: an invoke's child), has_wait (1/0),
--       and with a wait: field, member, record, path
local why = refuse(KEYS[1], ARGV[1], ARGV[2])
if why then
  return why
end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[3]) then
  return 'stale'
end
local now = tonumber(ARGV[6])
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[1], 'join_id', ARGV[4], 'join_job', ARGV[5], 'status', ARGV[7])
-- After steps ran in parallel, the next call asks the SDK to plan rather than run (Inngest's
-- ForceStepPlan); one planned step at a time lifts it.
if tonumber(ARGV[8]) > 1 then
  redis.call('HSET', KEYS[1], 'force_plan', '1')
else
  redis.call('HDEL', KEYS[1], 'force_plan')
end
local i, k = 9, 7
for _ = 1, tonumber(ARGV[8]) do
  local key, name, job_id = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  redis.call('SADD', KEYS[3], key)
  -- ':planned' gives a step that no code of ours runs (a sleep, a wait, an invoke) its duration
  redis.call('HSET', KEYS[4], key .. ':name', name, key .. ':planned', now)
  if job_id ~= '' then
    local score = tonumber(ARGV[i + 4])
    enqueue(key_job(job_id), key_result(job_id), KEYS[6], ARGV[i + 3], score,
      math.max(0, score - now) + JOB_TTL_MS, now)
    redis.call('SADD', KEYS[5], job_id)
  end
  local start_id = ARGV[i + 5]
  if start_id ~= '' then
    enqueue(key_job(start_id), key_result(start_id), KEYS[6], ARGV[i + 6], now, JOB_TTL_MS, now)
    redis.call('SADD', KEYS[5], start_id)
  end
  if ARGV[i + 7] == '1' then
    k = register_wait_from(KEYS[1], KEYS, k, ARGV, i + 8)
    i = i + 12
  else
    i = i + 8
  end
end
return 'ok'
