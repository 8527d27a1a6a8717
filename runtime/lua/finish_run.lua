-- End a run: record its output or error, start its retention clock, and hand an invoked run's
-- result to its parent, atomically.
-- KEYS: run
-- ARGV: the fields of FinishRunArgs (runtime/script_args.py), read by name as ARG.<field>
-- Returns reply(outcome); the runs after it are parents failed by this run's result.
local why = refuse(KEYS[1], ARG.fence_field, ARG.fence)
if why then
  return reply(why)
end
local now = tonumber(ARG.now_ms)
local defaults = limits_of(ARG.max_state_bytes, ARG.retention_s)
redis.call('HSET', KEYS[1], 'status', ARG.status, ARG.result_field, ARG.result_blob, 'ended', now)
close_run(ARG.run_id, now, run_limits(KEYS[1], defaults).retention)
notify_parent(KEYS[1], ARG.result_field, ARG.result_blob, now, defaults)
return reply('ok')
