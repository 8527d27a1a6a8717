-- Store a batch of events and create the runs they start, in one script, so that a batch is all or
-- nothing. Under maxmemory Redis decides as a script starts whether it may write: when memory is
-- full its first write is refused, before anything is stored (Redis 6.2 and 7 alike), and a script
-- that started writing runs to its end. A pipeline of separate commands would store part of a batch.
-- create_run (runtime/lua/create_run.lua, put in front of this text as a function of its own KEYS
-- and ARGV by runtime/ingest.py) creates each run exactly as RunStore.create_run would.
-- The runs were chosen from routes read under a version of the registry (runtime/registry.py): if a
-- registration changed it since, nothing is written and the sender routes again.
-- What each event did (its outcomes: runtime/event_queries.py) is stored beside it: the outcomes
-- the caller knew (no function matched) and, per run it asked for, what create_run did.
-- KEYS: the events index; per event: its key, its name's recent list, its name's events index, its
--       outcomes, its name's waits in each of the n_shards shards; then each run's create_run KEYS.
-- ARGV: now_ms, retention_s, recent_max, look_back_ms, registry version ('' for none), n_events,
--       n_shards, then per event: id, blob, outcomes known (msgpack list); n_runs, then per run:
--       n_keys, n_args, its event's number (1...), 1 when it gathers events (debounce, batch) else
--       0, then its create_run ARGV.
-- Returns {'stale'}, or {'ok', runs created, then per event 1 when some run waits for its name, then
-- three lists: the starts flow control skipped (run id, reason, ...), the runs a singleton replaced
-- (cancelled), and the runs those ends failed (ENDED: parents failed by their child's result)}.
if (redis.call('GET', KEY_FUNCTIONS_VERSION) or '') ~= ARGV[5] then
  return {'stale'}
end
local now, retention = tonumber(ARGV[1]), tonumber(ARGV[2])
local recent_max, look_back = tonumber(ARGV[3]), ARGV[4]
local n_shards = tonumber(ARGV[7])
local a, k = 8, 2
local waited, outcomes, outcome_keys = {}, {}, {}
for e = 1, tonumber(ARGV[6]) do
  local id = ARGV[a]
  redis.call('SET', KEYS[k], ARGV[a + 1], 'EX', retention)
  redis.call('ZADD', KEYS[1], now, id)
  -- before any wait is matched, so a wait registered meanwhile finds the event by looking back
  redis.call('LPUSH', KEYS[k + 1], now .. ':' .. id)
  redis.call('LTRIM', KEYS[k + 1], 0, recent_max - 1)
  redis.call('PEXPIRE', KEYS[k + 1], look_back)
  redis.call('ZADD', KEYS[k + 2], now, id)
  redis.call('ZREMRANGEBYSCORE', KEYS[k + 2], '-inf', now - retention * 1000)
  redis.call('EXPIRE', KEYS[k + 2], retention)
  outcomes[e], outcome_keys[e] = cmsgpack.unpack(ARGV[a + 2]), KEYS[k + 3]
  waited[e] = redis.call('EXISTS', unpack(KEYS, k + 4, k + 3 + n_shards))
  a, k = a + 3, k + 4 + n_shards
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - retention * 1000)
local n_runs = tonumber(ARGV[a])
a = a + 1
local created, skipped, replaced = 0, {}, {}
for _ = 1, n_runs do
  local n_keys, n_args = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local run_keys, run_args = {}, {}
  for j = 1, n_keys do
    run_keys[j] = KEYS[k + j - 1]
  end
  local event_no, gathers = tonumber(ARGV[a + 2]), ARGV[a + 3]
  for j = 1, n_args do
    run_args[j] = ARGV[a + 3 + j]
  end
  local reply = create_run(run_keys, run_args)
  -- create_run's ARGV start with the run's id and its function's slug (CreateRunArgs)
  local outcome = {run_args[2], 'started', reply[2], ''}
  if reply[1] == 1 then
    created = created + 1
    if reply[3] then
      replaced[#replaced + 1] = reply[3]
    end
  elseif reply[1] == 2 then
    skipped[#skipped + 1] = reply[2]
    skipped[#skipped + 1] = reply[3]
    outcome[2], outcome[4] = 'skipped', reply[3]
  elseif gathers == '1' then
    outcome[2] = 'joined'
  else
    outcome[2] = 'deduplicated'
  end
  local list = outcomes[event_no]
  list[#list + 1] = outcome
  k, a = k + n_keys, a + 4 + n_args
end
for e = 1, #outcome_keys do
  redis.call('SET', outcome_keys[e], cmsgpack.pack(outcomes[e]), 'EX', retention)
end
local out = {'ok', created, unpack(waited)}
out[#out + 1] = skipped
out[#out + 1] = replaced
out[#out + 1] = ENDED
return out
