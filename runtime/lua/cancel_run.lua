-- Cancel a run: no further steps; its delayed jobs, waits and timers are dropped.
-- ARGV: run_id, now_ms, retention_s, error_blob, max_state_bytes
-- Returns reply(outcome); the runs after it are parents failed by this run's result.
local run = run_part(ARGV[1], 'run')
local why = refuse(run, 'fence', '')
if why then
  return reply(why)
end
redis.call('HSET', run, 'status', 'cancelled', 'error', ARGV[4], 'ended', ARGV[2])
close_run(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
notify_parent(run, 'error', ARGV[4], tonumber(ARGV[2]), limits_of(ARGV[5], ARGV[3]))
return reply('ok')
