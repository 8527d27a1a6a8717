-- Claim a run for one invocation and return what the worker does not have cached (load_run in the
-- prelude; claim_jobs.lua does the same for the jobs it claims).
-- KEYS: run, events, memo, stack, steps, timers, pending (declared for Redis; the prelude builds
--       the same names from the run id)
-- ARGV: position, known_len (-1: send the events too), fence_field, now_ms, kind, step_key, run_id
return load_run(ARGV[7], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6])
