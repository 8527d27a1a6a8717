-- Re-enqueue a sleeping run's wake job if its arq job vanished (expired past arq's grace, evicted).
-- KEYS: run, job, result, queue, timers
-- ARGV: member, payload, score, ttl_ms
-- Returns 'revived', 'present' (job still queued), or 'dropped' (the run no longer waits on it).
if redis.call('HGET', KEYS[1], 'timer') ~= ARGV[1] then
  redis.call('ZREM', KEYS[5], ARGV[1])
  return 'dropped'
end
local job_id = job_id_of(KEYS[2])
if redis.call('EXISTS', KEYS[2]) == 1 and (redis.call('ZSCORE', KEYS[4], job_id) or SLOTS.waiting(job_id)) then
  return 'present' -- queued, or waiting in its lane for a concurrency slot
end
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[3], job_id)
signal_queue(KEYS[4], ARGV[3], nil)
return 'revived'
