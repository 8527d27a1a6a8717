-- Create a run and enqueue its first job, at most once per dedupe key.
-- KEYS: run, events, dedupe (or run again when none), job, result, queue, runs_active, then per
--       cancellation rule its wait keys (2 or 3: see register_wait_from in the prelude)
--       and, when ARG.gather is set, the gathering's pointer last (see gather.lua)
-- ARGV: the fields of CreateRunArgs (runtime/script_args.py), read by name as ARG.<field>, then per cancellation rule (4): field, member, record, path
-- Returns {1, run id} (created), or {0, run id} when no run was created: the run of the dedupe key,
-- or the open debounce or batch the event joined (or, older than its event, was ignored by).
local gather, due = nil, tonumber(ARG.now_ms)
if ARG.gather ~= '' then
  gather = parse_gather(ARG.gather)
  local joined = gather_join(KEYS, gather, due, ARG.events_blob, ARG.event_ids)
  if joined then
    return joined
  end
  due = gather_due(gather, due)
end
if ARG.dedupe_ttl_s ~= '0' then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    return {0, existing}
  end
  redis.call('SET', KEYS[3], ARG.run_id, 'EX', ARG.dedupe_ttl_s)
end
redis.call('HSET', KEYS[1], 'fn', ARG.fn, 'app', ARG.app, 'q', queue_id_of(KEYS[6]), 'status', STATUS_QUEUED, 'created', ARG.now_ms,
  'event_ids', ARG.event_ids, 'fence', '0', 'state_bytes', string.len(ARG.events_blob))
redis.call('SET', KEYS[2], ARG.events_blob)
if ARG.parent ~= '' then
  redis.call('HSET', KEYS[1], 'parent', ARG.parent)
end
if ARG.limits ~= '' then
  redis.call('HSET', KEYS[1], 'lim', ARG.limits)
end
local i, k = ARG_REST, 8
for _ = 1, tonumber(ARG.n_rules) do
  k = register_wait_from(KEYS[1], KEYS, k, ARGV, i)
  i = i + 4
end
redis.call('ZADD', KEYS[7], ARG.now_ms, ARG.run_id)
enqueue(KEYS[4], KEYS[5], KEYS[6], ARG.payload, due, ARG.ttl_ms, ARG.now_ms)
redis.call('HSET', KEYS[1], 'next_job', job_id_of(KEYS[4]))
if gather then
  gather_open(KEYS, gather, ARG.run_id, tonumber(ARG.now_ms), due, ARG.events_blob)
end
return {1, ARG.run_id}
