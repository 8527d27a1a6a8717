-- Resolve one pending step of a run (see resolve_pending in the prelude).
-- KEYS: run, memo, stack, steps, pending (resolve_pending builds the same names from run_id; an
--       invoked run's parent, and the join job it enqueues, are found in the run's data)
-- ARGV: run_id, key, value, name, now_ms, fence_field ('' = unfenced), fence, max_state_bytes,
--       retention_s (the defaults: see run_limits), attempts, duration_ms (both '' unless the value is what the step's code just
--       returned: a planned step's result)
-- Returns reply(outcome): 'ok', 'joined', a refusal, or 'state_too_large' (the run failed).
local executed = nil
if ARGV[10] ~= '' then
  executed = {attempts = ARGV[10], ms = ARGV[11]}
end
return reply(resolve_pending(ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7],
  limits_of(ARGV[8], ARGV[9]), executed))
