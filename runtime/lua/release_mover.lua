-- A worker that stops gives up the queue's mover role, if it holds it, and wakes another worker to
-- take it over (see claim_jobs.lua), so that delayed jobs do not wait for its lease to lapse.
-- KEYS: mover lease, mover's wake time, ready list
-- ARGV: lease token
-- Returns 1 when it held the role.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
push_token(KEYS[3])
return 1
