-- Resolve one pending step of a run (see resolve_pending in the prelude).
-- ARGV: run_id, key, value, name, now_ms, fence_field ('' = unfenced), fence
return resolve_pending(ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7])
