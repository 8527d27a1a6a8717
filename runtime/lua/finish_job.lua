-- End a job that this worker ran, as arq's finish_job does, but only while the job is still this
-- worker's: if its lease lapsed and another worker took the job over, that worker is running it now
-- and will end it (deleting it here could lose it, should that worker die before committing).
-- KEYS: in-progress lock, retry counter, job, queue
-- ARGV: lease token, 'finish' (the job is done) or 'again' (run it again later), delay_ms (for 'again')
-- Returns 'ok', or 'taken' when another worker holds the job.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 'taken'
end
redis.call('DEL', KEYS[1])
if ARGV[2] == 'finish' then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], string.sub(KEYS[3], 9))
elseif tonumber(ARGV[3]) > 0 then
  redis.call('ZINCRBY', KEYS[4], ARGV[3], string.sub(KEYS[3], 9))
end
return 'ok'
