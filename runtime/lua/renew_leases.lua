-- Extend the leases this worker holds: a lock whose value is another worker's token is not ours any
-- more (our lease lapsed and that worker took the job over), so it is left alone. A renewed job's
-- score moves with its lease (see claim_jobs.lua), so that it comes due only if the lease lapses.
-- KEYS: queue, then the jobs' in-progress locks
-- ARGV: lease token, lease_ms, now_ms, then the jobs' ids (in the order of their locks)
-- Returns one flag per job: 1 renewed, 2 ended (no lock and off the queue: its commit ended it
-- while this call was on its way), 0 lost.
local out = {}
local due = tonumber(ARGV[3]) + tonumber(ARGV[2])
for i = 2, #KEYS do
  local holder = redis.call('GET', KEYS[i])
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    redis.call('ZADD', KEYS[1], 'XX', due, ARGV[i + 2])
    SLOTS.renew(ARGV[i + 2], due)
    out[i - 1] = 1
  elseif not holder and not redis.call('ZSCORE', KEYS[1], ARGV[i + 2]) then
    out[i - 1] = 2
  else
    out[i - 1] = 0
  end
end
return out
