-- Resolve one pending step of a run (see resolve_pending in the prelude).
-- KEYS: run, memo, stack, steps, pending (resolve_pending builds the same names from run_id; an
--       invoked run's parent, and the join job it enqueues, are found in the run's data)
-- ARGV: the fields of ResolveStepArgs (runtime/script_args.py), read by name as ARG.<field>
-- Returns reply(outcome): 'ok', 'joined', a refusal, or 'state_too_large' (the run failed).
local executed = nil
if ARG.attempts ~= '' then
  executed = {attempts = ARG.attempts, ms = ARG.duration_ms}
end
local fields = nil
if ARG.history ~= '' then
  fields = ARG.history
end
return reply(resolve_pending(ARG.run_id, ARG.key, ARG.value, ARG.name, tonumber(ARG.now_ms), ARG.fence_field, ARG.fence,
  limits_of(ARG.max_state_bytes, ARG.retention_s), executed, fields))
