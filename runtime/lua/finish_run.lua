-- End a run: record its output or error, start its retention clock, and hand an invoked run's
-- result to its parent, atomically.
-- KEYS: run
-- ARGV: run_id, fence_field, fence, status, result_field ('output' or 'error'), result_blob, now_ms,
--       retention_s, max_state_bytes (the defaults: see run_limits)
-- Returns reply(outcome); the runs after it are parents failed by this run's result.
local why = refuse(KEYS[1], ARGV[2], ARGV[3])
if why then
  return reply(why)
end
local now = tonumber(ARGV[7])
local defaults = limits_of(ARGV[9], ARGV[8])
redis.call('HSET', KEYS[1], 'status', ARGV[4], ARGV[5], ARGV[6], 'ended', now)
close_run(ARGV[1], now, run_limits(KEYS[1], defaults).retention)
notify_parent(KEYS[1], ARGV[5], ARGV[6], now, defaults)
return reply('ok')
