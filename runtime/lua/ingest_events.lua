-- Store a batch of events and create the runs they start, in one script, so that a batch is all or
-- nothing. Under maxmemory Redis decides as a script starts whether it may write: when memory is
-- full its first write is refused, before anything is stored (Redis 6.2 and 7 alike), and a script
-- that started writing runs to its end. A pipeline of separate commands would store part of a batch.
-- create_run (runtime/lua/create_run.lua, put in front of this text as a function of its own KEYS
-- and ARGV by runtime/ingest.py) creates each run exactly as RunStore.create_run would.
-- The runs were chosen from routes read under a version of the registry (runtime/registry.py): if a
-- registration changed it since, nothing is written and the sender routes again.
-- KEYS: the events index; per event: its key, its name's recent list, its name's waits in each of
--       the n_shards shards; then each run's create_run KEYS.
-- ARGV: now_ms, retention_s, recent_max, look_back_ms, registry version ('' for none), n_events,
--       n_shards, then per event: id, blob; n_runs, then per run: n_keys, n_args, then its
--       create_run ARGV.
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
local waited = {}
for e = 1, tonumber(ARGV[6]) do
  local id = ARGV[a]
  redis.call('SET', KEYS[k], ARGV[a + 1], 'EX', retention)
  redis.call('ZADD', KEYS[1], now, id)
  -- before any wait is matched, so a wait registered meanwhile finds the event by looking back
  redis.call('LPUSH', KEYS[k + 1], now .. ':' .. id)
  redis.call('LTRIM', KEYS[k + 1], 0, recent_max - 1)
  redis.call('PEXPIRE', KEYS[k + 1], look_back)
  waited[e] = redis.call('EXISTS', unpack(KEYS, k + 2, k + 1 + n_shards))
  a, k = a + 2, k + 2 + n_shards
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
  for j = 1, n_args do
    run_args[j] = ARGV[a + 1 + j]
  end
  local reply = create_run(run_keys, run_args)
  if reply[1] == 1 then
    created = created + 1
    if reply[3] then
      replaced[#replaced + 1] = reply[3]
    end
  elseif reply[1] == 2 then
    skipped[#skipped + 1] = reply[2]
    skipped[#skipped + 1] = reply[3]
  end
  k, a = k + n_keys, a + 2 + n_args
end
local out = {'ok', created, unpack(waited)}
out[#out + 1] = skipped
out[#out + 1] = replaced
out[#out + 1] = ENDED
return out
