-- Enqueue a delayed job that belongs to a run (dropped if the run ends first).
-- KEYS: job, result, queue, jobs
-- ARGV: payload, score, ttl_ms, now_ms
local added = enqueue(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
redis.call('SADD', KEYS[4], job_id_of(KEYS[1]))
return added
