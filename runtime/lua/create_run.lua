-- Create a run and enqueue its first job, at most once per dedupe key.
-- KEYS: run, events, dedupe (or run again when none), job, result, queue, runs_active
-- ARGV: run_id, fn, app, events_blob, now_ms, payload, ttl_ms, dedupe_ttl_s (0 = none), event_ids
if ARGV[8] ~= '0' then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    return {0, existing}
  end
  redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[8])
end
redis.call('HSET', KEYS[1], 'fn', ARGV[2], 'app', ARGV[3], 'status', 'queued', 'created', ARGV[5],
  'event_ids', ARGV[9], 'fence', '0', 'state_bytes', string.len(ARGV[4]))
redis.call('SET', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[7], ARGV[5], ARGV[1])
enqueue(KEYS[4], KEYS[5], KEYS[6], ARGV[6], ARGV[5], ARGV[7])
return {1, ARGV[1]}
