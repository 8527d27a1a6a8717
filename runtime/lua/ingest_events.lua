-- Store a batch of events in one shard's event log and create the runs they start in that shard, in
-- one script, so that a batch is all or nothing. Under maxmemory Redis decides as a script starts
-- whether it may write: when memory is full its first write is refused, before anything is stored
-- (Redis 6.2 and 7 alike), and a script that started writing runs to its end. A pipeline of
-- separate commands would store part of a batch.
-- create_run (runtime/lua/create_run.lua, put in front of this text as a function of its own KEYS
-- and ARGV by runtime/ingest.py) creates each run exactly as RunStore.create_run would.
-- What the batch makes other shards do goes into this shard's outbox (runtime/outbox.py), in this
-- same script: the runs to create in other shards (one message each), and the matching of the
-- events against the waits and cancellation rules of every shard (one message, written when there
-- are several shards or when a run of this shard waits for one of the names). So a sender dying
-- after this script loses none of it: the outbox's sweeper delivers what the sender did not.
-- On one shard the runs were chosen from routes read under a version of the registry
-- (runtime/registry.py): if a registration changed it since, nothing is written and the sender
-- routes again. With several shards the registry lives in another slot and is not checked here.
-- What each event did (its outcomes: runtime/event_queries.py) is stored beside it: the outcomes
-- the caller knew (no function matched) and, per run created here, what create_run did (a run
-- created in another shard adds its outcome when its message is acknowledged).
-- KEYS: the shard's events index, outbox, outbox bodies; per event: its key, its name's recent
--       list, its name's events index, its outcomes, its name's waits in this shard; then each
--       run's create_run KEYS.
-- ARGV: now_ms, retention_s, recent_max, look_back_ms, registry version ('' for none, '-' not to
--       check), n_events, n_shards, the matching message's id and body, n_messages, then per
--       message (runs for other shards): id, body; then per event: id, blob, outcomes known
--       (msgpack list); n_runs, then per run: n_keys, n_args, its event's number (1...), 1 when it
--       gathers events (debounce, batch) else 0, then its create_run ARGV.
-- Returns {'stale'}, or {'ok', runs created, then three lists: the starts flow control skipped
-- (run id, reason, ...), the runs a singleton replaced (cancelled), and ends() (the runs those ends
-- failed, then the outbox messages written, marked)}.
if ARGV[5] ~= '-' and (redis.call('GET', KEY_FUNCTIONS_VERSION) or '') ~= ARGV[5] then
  return {'stale'}
end
local tag = tag_of_key(KEYS[1])
local now, retention = tonumber(ARGV[1]), tonumber(ARGV[2])
local recent_max, look_back = tonumber(ARGV[3]), ARGV[4]
local n_shards = tonumber(ARGV[7])
local a, k = 11, 4
for _ = 1, tonumber(ARGV[10]) do
  outbox_add(tag, ARGV[a], ARGV[a + 1], now)
  a = a + 2
end
local waited, outcomes, outcome_keys = 0, {}, {}
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
  waited = waited + redis.call('EXISTS', KEYS[k + 4])
  a, k = a + 3, k + 5
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - retention * 1000)
if n_shards > 1 or waited > 0 then
  outbox_add(tag, ARGV[8], ARGV[9], now)
end
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
return {'ok', created, skipped, replaced, ends()}
