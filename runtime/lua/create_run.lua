-- Create a run and enqueue its first job, at most once per dedupe key.
-- KEYS: run, events, dedupe (or run again when none), job, result, queue, runs_active, then per
--       cancellation rule its wait keys (2 or 3: see register_wait_from in the prelude)
-- ARGV: run_id, fn, app, events_blob, now_ms, payload, ttl_ms, dedupe_ttl_s (0 = none), event_ids,
--       parent ('<run_id>|<step key>' of an invoking run, or ''), limits ('<max_state>,<retention_s>'
--       of the function, or '' for the defaults: see run_limits in the prelude), n_rules,
--       then per cancellation rule (4): field, member, record, path ('' when not indexed)
if ARGV[8] ~= '0' then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    return {0, existing}
  end
  redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[8])
end
redis.call('HSET', KEYS[1], 'fn', ARGV[2], 'app', ARGV[3], 'q', queue_id_of(KEYS[6]), 'status', STATUS_QUEUED, 'created', ARGV[5],
  'event_ids', ARGV[9], 'fence', '0', 'state_bytes', string.len(ARGV[4]))
redis.call('SET', KEYS[2], ARGV[4])
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[1], 'parent', ARGV[10])
end
if ARGV[11] ~= '' then
  redis.call('HSET', KEYS[1], 'lim', ARGV[11])
end
local i, k = 13, 8
for _ = 1, tonumber(ARGV[12] or '0') do
  k = register_wait_from(KEYS[1], KEYS, k, ARGV, i)
  i = i + 4
end
redis.call('ZADD', KEYS[7], ARGV[5], ARGV[1])
enqueue(KEYS[4], KEYS[5], KEYS[6], ARGV[6], ARGV[5], ARGV[7])
redis.call('HSET', KEYS[1], 'next_job', job_id_of(KEYS[4]))
return {1, ARGV[1]}
