-- Cancel a run: no further steps; its delayed jobs, waits and timers are dropped.
-- ARGV: run_id, now_ms, retention_s, error_blob
local run = run_part(ARGV[1], 'run')
local why = refuse(run, 'fence', '')
if why then
  return why
end
redis.call('HSET', run, 'status', 'cancelled', 'error', ARGV[4], 'ended', ARGV[2])
close_run(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
notify_parent(run, 'error', ARGV[4], tonumber(ARGV[2]))
return 'ok'
