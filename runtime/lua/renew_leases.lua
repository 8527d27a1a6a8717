-- Extend the leases this worker holds: a lock whose value is another worker's token is not ours any
-- more (our lease lapsed and that worker took the job over), so it is left alone.
-- KEYS: the jobs' in-progress locks
-- ARGV: lease token, lease_ms
-- Returns one flag per key: 1 renewed, 0 lost.
local out = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
