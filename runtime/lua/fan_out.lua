-- Record the new steps a function reported together (parallel steps, a wait, an invoke), enqueue the
-- jobs that will resolve them and the job that will run once they all have (the join).
-- KEYS: run, stack, pending, steps, jobs, queue (the jobs are named by the ids in ARGV, the waits'
--       keys are in ARGV: see register_wait)
-- ARGV: fence_field, fence, position, join_id, join_payload, now_ms, status, n_ops,
--       then per op (12): key, name, job_id, payload, score, wait_hash, wait_set, wait_member,
--                         wait_record, paths_key/path as 'paths_key\npath' or '', start_job_id,
--                         start_payload (a job due now besides the step's own: an invoke's child)
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
local i = 9
for _ = 1, tonumber(ARGV[8]) do
  local key, name, job_id = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  redis.call('SADD', KEYS[3], key)
  redis.call('HSET', KEYS[4], key .. ':name', name)
  if job_id ~= '' then
    local score = tonumber(ARGV[i + 4])
    enqueue(key_job(job_id), key_result(job_id), KEYS[6], ARGV[i + 3], score,
      math.max(0, score - now) + JOB_TTL_MS)
    redis.call('SADD', KEYS[5], job_id)
  end
  if ARGV[i + 5] ~= '' then
    local paths_key, path = '', ''
    if ARGV[i + 9] ~= '' then
      paths_key, path = string.match(ARGV[i + 9], '^(.-)\n(.*)$')
    end
    register_wait(KEYS[1], 'wait:' .. key, ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], paths_key, path)
  end
  local start_id = ARGV[i + 10]
  if start_id ~= '' then
    enqueue(key_job(start_id), key_result(start_id), KEYS[6], ARGV[i + 11], now, JOB_TTL_MS)
    redis.call('SADD', KEYS[5], start_id)
  end
  i = i + 12
end
return 'ok'
