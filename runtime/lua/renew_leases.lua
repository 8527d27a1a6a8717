-- Extend the leases this worker holds: a lock whose value is another worker's token is not ours any
-- more (our lease lapsed and that worker took the job over), so it is left alone. A renewed job's
-- score moves with its lease (see claim_jobs.lua), so that it comes due only if the lease lapses.
-- KEYS: queue, then the jobs' in-progress locks
-- ARGV: lease token, lease_ms, now_ms, then the jobs' ids (in the order of their locks)
-- Returns one flag per job: 1 renewed, 0 lost.
local out = {}
local due = tonumber(ARGV[3]) + tonumber(ARGV[2])
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    redis.call('ZADD', KEYS[1], 'XX', due, ARGV[i + 2])
    SLOTS.renew(ARGV[i + 2], due)
    out[i - 1] = 1
  else
    out[i - 1] = 0
  end
end
return out
