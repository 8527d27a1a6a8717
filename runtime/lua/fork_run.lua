-- Start a new run of an ended run's function with the same events (runtime/actions.py): a replay
-- (from the start) or a resume from a step (the first ARG.keep steps of the old run's stack kept:
-- their memo values as they are, encrypted or not, their bookkeeping, and the state size they
-- make; the new run's first job enters at that position). The new run is created by create_run
-- itself (put in front of this text as a local function by runtime/scripts.py, see CALLS), in the
-- old run's shard, so that one script reads the old run and writes the new one.
-- KEYS: old run, old events, old memo, old stack, old steps, new memo, new stack, new steps, then
--       create_run's KEYS for the new run (its record first)
-- ARGV: the fields of ForkRunArgs (runtime/script_args.py), then create_run's ARGV for the new run
-- Returns {'ok', new run id}, or why not: {'missing'}, {'status', status} (not in ARG.allowed),
-- {'moved', key found at the position or ''} (from_step is neither at position ARG.keep nor right
-- after a stack of ARG.keep steps), {'broken', key} (a kept step has no memo value), {'refused',
-- created, reason} (create_run did not create the run: never expected, it is given no dedupe key,
-- start checks or gathering).
local OLD, OLD_MEMO, OLD_STACK, OLD_STEPS = KEYS[1], KEYS[3], KEYS[4], KEYS[5]
local NEW_MEMO, NEW_STACK, NEW_STEPS, NEW = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local status = redis.call('HGET', OLD, 'status')
if not status then
  return {'missing'}
end
local allowed = false
for name in string.gmatch(ARG.allowed, '[^,]+') do
  allowed = allowed or name == status
end
if not allowed then
  return {'status', status}
end
-- A command over many arguments, sent in chunks (Lua's unpack is limited to a few thousand values).
local CHUNK = 1000
local function in_chunks(command, key, items)
  for first = 1, #items, CHUNK do
    redis.call(command, key, unpack(items, first, math.min(#items, first + CHUNK - 1)))
  end
end

local keep = tonumber(ARG.keep)
local prefix, values = {}, {}
if ARG.from_step ~= '' then
  -- the step is at position keep (committed), or the stack ends there (the step it stopped at);
  -- an ended run's stack only grows (a cancelled run records the step that was running), so the
  -- position of a committed step never changes
  local at = redis.call('LINDEX', OLD_STACK, keep)
  if at and at ~= ARG.from_step then
    return {'moved', at}
  end
  if not at and redis.call('LLEN', OLD_STACK) ~= keep then
    return {'moved', ''}
  end
end
if keep > 0 then
  prefix = redis.call('LRANGE', OLD_STACK, 0, keep - 1)
  for first = 1, #prefix, CHUNK do
    local got = redis.call('HMGET', OLD_MEMO, unpack(prefix, first, math.min(#prefix, first + CHUNK - 1)))
    for i = 1, #got do
      values[first + i - 1] = got[i]
    end
  end
  for i = 1, #prefix do
    if not values[i] then
      return {'broken', prefix[i]}
    end
  end
end
local created = create_run({unpack(KEYS, 9)}, {unpack(ARGV, ARG_REST)})
if created[1] ~= 1 then
  return {'refused', tostring(created[1]), created[3] or ''}
end
if keep > 0 then
  local size = tonumber(redis.call('HGET', NEW, 'state_bytes') or '0')
  local kept, entries = {}, {}
  for i = 1, #prefix do
    entries[#entries + 1] = prefix[i]
    entries[#entries + 1] = values[i]
    size = size + string.len(values[i])
    kept[prefix[i]] = true
  end
  in_chunks('HSET', NEW_MEMO, entries)
  in_chunks('RPUSH', NEW_STACK, prefix)
  local fields, copied = redis.call('HGETALL', OLD_STEPS), {}
  for i = 1, #fields, 2 do
    local key = string.match(fields[i], '^([^:]*):')
    if key and kept[key] then
      copied[#copied + 1] = fields[i]
      copied[#copied + 1] = fields[i + 1]
    end
  end
  in_chunks('HSET', NEW_STEPS, copied)
  redis.call('HSET', NEW, 'state_bytes', size)
end
if ARG.from_step ~= '' then
  redis.call('HSET', NEW, 'from_step', ARG.from_step)
end
redis.call('HSET', NEW, ARG.link, ARG.old_run_id)
-- the old run lists its newest replays and resumes (each names it back in its record)
local listed = {}
for id in string.gmatch(redis.call('HGET', OLD, 'replays') or '', '[^,]+') do
  listed[#listed + 1] = id
end
listed[#listed + 1] = ARG.new_run_id
local first = math.max(1, #listed - tonumber(ARG.max_links) + 1)
redis.call('HSET', OLD, 'replays', table.concat(listed, ',', first))
return {'ok', ARG.new_run_id}
