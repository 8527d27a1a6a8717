-- Park a run until a later job: a retry after backoff, or the end of a sleep.
-- KEYS: run, stack, steps, job, result, queue, timers, jobs, pending
-- ARGV: the fields of ScheduleArgs (runtime/script_args.py), read by name as ARG.<field>
if ARG.executed == '1' then
  count_execution(KEYS[1], KEYS[3], ARG.key)
end
local why = refuse(KEYS[1], ARG.fence_field, ARG.fence)
if why then
  return why
end
if ARG.position == '-1' then
  if redis.call('SISMEMBER', KEYS[9], ARG.key) == 0 then
    return 'stale'
  end
elseif redis.call('LLEN', KEYS[2]) ~= tonumber(ARG.position) then
  return 'stale'
end
if ARG.key ~= '' and ARG.timer_member == '' then
  redis.call('HSET', KEYS[3], ARG.key .. ':attempts', ARG.attempts)
  if ARG.name ~= '' then
    redis.call('HSET', KEYS[3], ARG.key .. ':name', ARG.name)
  end
  if ARG.error_message ~= '' then
    redis.call('HSET', KEYS[3], ARG.key .. ':error', ARG.error_message)
  end
elseif ARG.key == '' then
  -- the function's own code failed outside any step: count the run's retries, keep the last error
  redis.call('HINCRBY', KEYS[1], 'fn_retries', 1)
  redis.call('HSET', KEYS[1], 'fn_error', ARG.error_message)
end
if ARG.status ~= '' then
  redis.call('HSET', KEYS[1], 'status', ARG.status)
end
if ARG.timer_member ~= '' then
  -- a sleep: its wake job is known by the timer (the run's 'timer' and 'sleep_key' rebuild it);
  -- the step's name waits in the run record too, so a sleeping run needs no steps hash
  redis.call('HSET', KEYS[1], 'timer', ARG.timer_member, 'sleep_key', ARG.key, 'sleep_name', ARG.name)
  redis.call('ZADD', KEYS[7], ARG.score, ARG.timer_member)
  redis.call('HDEL', KEYS[1], 'next_job')
elseif ARG.position == '-1' then
  redis.call('SADD', KEYS[8], job_id_of(KEYS[4])) -- one of several planned steps' retries
else
  redis.call('HSET', KEYS[1], 'next_job', job_id_of(KEYS[4])) -- the run's retry is its next job
end
enqueue(KEYS[4], KEYS[5], KEYS[6], ARG.payload, ARG.score, ARG.ttl_ms, ARG.now_ms)
return 'ok'
