-- Append one entry to a run's history (runtime/history.py) that no write of its state carries: an
-- invoked child run's start (written in the child's script, which may be in another slot).
-- KEYS: run, history (record_history builds the same name from the run id)
-- ARGV: run_id, now_ms, fields (a packed msgpack map)
-- Returns 'ok', or 'missing' when the run is gone (nothing recorded).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 'missing'
end
record_history(ARGV[1], 'ok', ARGV[2], ARGV[3], TERMINAL[status] ~= nil)
return 'ok'
