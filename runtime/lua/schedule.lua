-- Park a run until a later job: a retry after backoff, or the end of a sleep.
-- KEYS: run, stack, steps, job, result, queue, timers, jobs, pending
-- ARGV: fence_field, fence, position (-1: a planned step, which must still be pending), key, name
--       ('' keeps the recorded one), attempts, error_message, status, payload, score, ttl_ms,
--       timer_member ('' = none), now_ms, executed ('1': the step's code ran and failed)
if ARGV[14] == '1' then
  count_execution(KEYS[1], KEYS[3], ARGV[4])
end
local why = refuse(KEYS[1], ARGV[1], ARGV[2])
if why then
  return why
end
if ARGV[3] == '-1' then
  if redis.call('SISMEMBER', KEYS[9], ARGV[4]) == 0 then
    return 'stale'
  end
elseif redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[3]) then
  return 'stale'
end
if ARGV[4] ~= '' and ARGV[12] == '' then
  redis.call('HSET', KEYS[3], ARGV[4] .. ':attempts', ARGV[6])
  if ARGV[5] ~= '' then
    redis.call('HSET', KEYS[3], ARGV[4] .. ':name', ARGV[5])
  end
  if ARGV[7] ~= '' then
    redis.call('HSET', KEYS[3], ARGV[4] .. ':error', ARGV[7])
  end
end
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[1], 'status', ARGV[8])
end
if ARGV[12] ~= '' then
  -- a sleep: its wake job is known by the timer (the run's 'timer' and 'sleep_key' rebuild it);
  -- the step's name waits in the run record too, so a sleeping run needs no steps hash
  redis.call('HSET', KEYS[1], 'timer', ARGV[12], 'sleep_key', ARGV[4], 'sleep_name', ARGV[5])
  redis.call('ZADD', KEYS[7], ARGV[10], ARGV[12])
  redis.call('HDEL', KEYS[1], 'next_job')
elseif ARGV[3] == '-1' then
  redis.call('SADD', KEYS[8], job_id_of(KEYS[4])) -- one of several planned steps' retries
else
  redis.call('HSET', KEYS[1], 'next_job', job_id_of(KEYS[4])) -- the run's retry is its next job
end
enqueue(KEYS[4], KEYS[5], KEYS[6], ARGV[9], ARGV[10], ARGV[11])
return 'ok'
