-- After a refused write, make sure the run still has something that will move it on: a job queued
-- or running, pending steps (their jobs, waits and timers resolve them), or a sleep's timer. A run
-- with none of these would stay parked forever: enqueue a job that re-enters it where it stands.
-- KEYS: run, stack, pending, job, result, queue
-- ARGV: position (the run's stack length as the caller read it), payload, now_ms, ttl_ms,
--       the caller's own job id (it is about to end, so it does not count)
-- Returns 'done', 'moved' (the run advanced meanwhile), 'pending', 'sleeping', 'queued' or 'nudged'.
local status = redis.call('HGET', KEYS[1], 'status')
if not status or TERMINAL[status] then
  return 'done'
end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[1]) then
  return 'moved'
end
if redis.call('SCARD', KEYS[3]) > 0 then
  return 'pending'
end
if redis.call('HEXISTS', KEYS[1], 'timer') == 1 then
  return 'sleeping'
end
local next_job = redis.call('HGET', KEYS[1], 'next_job')
if next_job and next_job ~= ARGV[5] and redis.call('EXISTS', key_job(next_job)) == 1 then
  return 'queued'
end
enqueue(KEYS[4], KEYS[5], KEYS[6], ARGV[2], ARGV[3], ARGV[4], ARGV[3])
redis.call('HSET', KEYS[1], 'next_job', job_id_of(KEYS[4]))
return 'nudged'
