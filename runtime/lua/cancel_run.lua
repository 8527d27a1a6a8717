-- Cancel a run: no further steps; its delayed jobs, waits and timers are dropped.
-- KEYS: run, events, memo, stack, steps, pending, jobs, timers, runs_active, runs_done (what close_run
--       touches; the run's queued jobs and its waits, and an invoked run's parent, are found in its data)
-- ARGV: run_id, now_ms, retention_s, error_blob, max_state_bytes (the defaults: see run_limits)
-- Returns reply(outcome); the runs after it are parents failed by this run's result.
local run = KEYS[1]
local why = refuse(run, 'fence', '')
if why then
  return reply(why)
end
local defaults = limits_of(ARGV[5], ARGV[3])
set_status(ARGV[1], STATUS_CANCELLED)
redis.call('HSET', run, 'error', ARGV[4], 'ended', ARGV[2])
close_run(ARGV[1], tonumber(ARGV[2]), run_limits(run, defaults).retention)
record_history(ARGV[1], 'ok', ARGV[2], cmsgpack.pack({k = 'cancel', error = error_fields(ARGV[4])}), true)
notify_parent(run, 'error', ARGV[4], tonumber(ARGV[2]), defaults)
return reply('ok')
