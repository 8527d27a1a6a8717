-- Create a run and enqueue its first job, at most once per dedupe key, unless flow control skips it
-- or the event joins a run that gathers events (debounce, batching: see gather.lua).
-- KEYS: run, events, dedupe (or run again when none), job, result, queue, runs_active, then the
--       flow checks' keys (see flow_starts.lua), then per cancellation rule its wait keys (2 or 3:
--       see register_wait_from in the prelude), and, when ARG.gather is set, the gathering's
--       pointer last
-- ARGV: the fields of CreateRunArgs (runtime/script_args.py), read by name as ARG.<field>, then the
--       flow checks' arguments (n_flow of them), then per cancellation rule (4): field, member,
--       record, path
-- Returns {1, run_id, replaced run id or false, ends} when created (replaced: the run a singleton in
-- cancel mode cancelled); {0, run id} when no run was created: the run exists already (this id, or
-- the run of the dedupe key), or the open debounce or batch the event joined (or, older than its
-- event, was ignored by); {2, run_id, reason, ends} when flow control skipped the start (the run's
-- record says so: status skipped). ends: the runs ended besides and the outbox messages written
-- (see ends in the prelude).
-- An event joining an open gathering is checked first: the start limits charge the event that
-- opens the run, once.
local now = tonumber(ARG.now_ms)
local gather, due = nil, now
if ARG.gather ~= '' then
  gather = parse_gather(ARG.gather)
  local joined = gather_join(KEYS, gather, due, ARG.events_blob, ARG.event_ids)
  if joined then
    return joined
  end
  due = gather_due(gather, due)
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  -- created already (a redelivered message, a cron tick or an invoke retried after a crash): a
  -- no-op that names the run, charging nothing again
  return {0, ARG.run_id}
end
if ARG.dedupe_ttl_s ~= '0' then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    return {0, existing}
  end
  redis.call('SET', KEYS[3], ARG.run_id, 'EX', ARG.dedupe_ttl_s)
end
local checks, k, i = flow_checks(KEYS, 8, ARGV, ARG_REST, tonumber(ARG.n_flow))
if #checks > 0 then
  local why = start_refusal(checks, now)
  if why then
    local defaults = limits_in(ARG.defaults, nil)
    -- a skipped start: a run-list entry with the reason, ended at once, no job (the dedupe key
    -- names it, so a resent event is not charged again)
    local limits = limits_in(ARG.limits, defaults)
    redis.call('HSET', KEYS[1], 'fn', ARG.fn, 'app', ARG.app, 'q', queue_id_of(KEYS[6]),
      'created', ARG.now_ms, 'ended', ARG.now_ms, 'event_ids', ARG.event_ids, 'reason', why, 'ev', ARG.event_name)
    index_new_run(ARG.run_id, ARG.event_name, ARG.now_ms)
    set_status(ARG.run_id, STATUS_SKIPPED)
    if ARG.limits ~= '' then
      redis.call('HSET', KEYS[1], 'lim', ARG.limits)
    end
    redis.call('EXPIRE', KEYS[1], limits.retention)
    index_done(ARG.run_id, now, limits.retention)
    if ARG.parent ~= '' then
      -- an invoked run that will not run: the invoking step fails with the reason, not waits
      redis.call('HSET', KEYS[1], 'parent', ARG.parent)
      notify_parent(KEYS[1], 'error', cmsgpack.pack({name = 'FunctionSkipped', message = why, stack = ''}),
        now, defaults)
    end
    return {2, ARG.run_id, why, ends()}
  end
end
redis.call('HSET', KEYS[1], 'fn', ARG.fn, 'app', ARG.app, 'q', queue_id_of(KEYS[6]), 'created', ARG.now_ms,
  'event_ids', ARG.event_ids, 'fence', '0', 'state_bytes', string.len(ARG.events_blob), 'ev', ARG.event_name)
index_new_run(ARG.run_id, ARG.event_name, ARG.now_ms)
set_status(ARG.run_id, STATUS_QUEUED)
redis.call('SET', KEYS[2], ARG.events_blob)
if ARG.parent ~= '' then
  redis.call('HSET', KEYS[1], 'parent', ARG.parent)
end
if ARG.trace ~= '' then
  redis.call('HSET', KEYS[1], 'tp', ARG.trace)
end
if ARG.limits ~= '' then
  redis.call('HSET', KEYS[1], 'lim', ARG.limits)
end
for _ = 1, tonumber(ARG.n_rules) do
  k = register_wait_from(KEYS[1], KEYS, k, ARGV, i)
  i = i + 4
end
if ARG.lane ~= '' then
  redis.call('HSET', KEYS[1], 'lane', ARG.lane, 'ck', ARG.step_slots, 'rk', ARG.run_slots)
end
local replaced = nil
if #checks > 0 then
  due, replaced = start_flow(checks, ARG.run_id, due, limits_in(ARG.defaults, nil))
end
if ARG.priority ~= '0' then
  redis.call('HSET', KEYS[1], 'prio', ARG.priority)
  if due <= now and not gather then
    due = due_now(ARG.priority, due) -- a throttled start, a debounce or a batch keeps its time
  end
end
redis.call('ZADD', KEYS[7], ARG.now_ms, ARG.run_id)
enqueue(KEYS[4], KEYS[5], KEYS[6], ARG.payload, due, tonumber(ARG.ttl_ms) + math.max(0, due - now), ARG.now_ms)
redis.call('HSET', KEYS[1], 'next_job', job_id_of(KEYS[4]))
if gather then
  gather_open(KEYS, gather, ARG.run_id, now, due, ARG.events_blob)
end
return {1, ARG.run_id, replaced or false, ends()}
