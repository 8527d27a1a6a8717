-- End a job that this worker ran, as arq's finish_job does, but only while the job is still this
-- worker's. If its lease lapsed, another worker may have taken the job over: that worker ends it,
-- and deleting it here could lose it, should that worker die before committing (its lock then
-- expires too, and the job must still be there to be taken over again). Without the lock, a job is
-- only put back for later ('again'), never deleted; at worst it runs once more and finds its work
-- done.
-- KEYS: in-progress lock, retry counter, job, queue
-- ARGV: lease token, 'finish' (the job is done) or 'again' (run it again later), delay_ms (for
--       'again'), now_ms
-- Returns 'ok', or 'taken' when the job is not this worker's any more.
local holder = redis.call('GET', KEYS[1])
if (holder and holder ~= ARGV[1]) or (not holder and ARGV[2] == 'finish') then
  return 'taken'
end
redis.call('DEL', KEYS[1])
local job_id = job_id_of(KEYS[3])
-- it runs no more (until it is claimed again): its concurrency slots go to whoever waits
SLOTS.release(job_id, tonumber(ARGV[4]))
if ARGV[2] == 'finish' then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], job_id)
elseif redis.call('ZSCORE', KEYS[4], job_id) then
  -- (a job another delivery has ended meanwhile is not put back); its score held the lease's end
  local due = tonumber(ARGV[4]) + tonumber(ARGV[3])
  redis.call('ZADD', KEYS[4], due, job_id)
  signal_queue(KEYS[4], due, ARGV[4])
end
return 'ok'
