-- Replace an app's function set: configs, and the event -> function trigger index.
-- A function id belongs to the app that registered it (the app_id in its config): when one of the
-- ids is another app's, nothing changes and the reply names the owner.
-- KEYS: functions, the app's function set, the app's checksum (the trigger sets and each function's
--       event set are named by the event names and slugs in ARGV and in the sets)
-- ARGV: app_id, checksum ('' = none), n, then per function: slug, config, n_events, event names...
-- Reply: {'ok', n, modified (1 when the checksum changed)} or {'owned', slug, owner}.
local app, checksum = ARGV[1], ARGV[2]
local functions, app_key, checksum_key = KEYS[1], KEYS[2], KEYS[3]

-- The app a registered function belongs to ('?' when its config cannot be read).
local function owner_of(blob)
  local ok, config = pcall(cmsgpack.unpack, blob)
  if ok and type(config) == 'table' and type(config['app_id']) == 'string' then
    return config['app_id']
  end
  return '?'
end

local i = 4
for _ = 1, tonumber(ARGV[3]) do
  local blob = redis.call('HGET', functions, ARGV[i])
  if blob then
    local owner = owner_of(blob)
    if owner ~= app then
      return {'owned', ARGV[i], owner}
    end
  end
  i = i + 3 + tonumber(ARGV[i + 2])
end

local before = {} -- slug -> config before this registration, to tell whether anything changed
for _, slug in ipairs(redis.call('SMEMBERS', app_key)) do
  local blob = redis.call('HGET', functions, slug)
  -- only this app's own functions: a set left listing another app's id must not delete it
  if blob and owner_of(blob) == app then
    before[slug] = blob
    local fn_events = key_function_events(slug)
    for _, name in ipairs(redis.call('SMEMBERS', fn_events)) do
      redis.call('SREM', key_trigger(name), slug)
    end
    redis.call('DEL', fn_events)
    redis.call('HDEL', functions, slug)
  end
end
redis.call('DEL', app_key)
local changed = false
i = 4
for _ = 1, tonumber(ARGV[3]) do
  local slug, config, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if before[slug] == config then
    before[slug] = nil
  else
    changed = true
    before[slug] = nil
  end
  redis.call('HSET', functions, slug, config)
  redis.call('SADD', app_key, slug)
  for k = 1, n do
    local name = ARGV[i + 2 + k]
    redis.call('SADD', key_trigger(name), slug)
    redis.call('SADD', key_function_events(slug), name)
  end
  i = i + 3 + n
end
if changed or next(before) ~= nil or not redis.call('GET', KEY_FUNCTIONS_VERSION) then
  -- a new version, unique across a Redis that was emptied and filled again: the server's clock
  local t = redis.call('TIME')
  redis.call('SET', KEY_FUNCTIONS_VERSION, t[1] .. string.format('%06d', tonumber(t[2])))
end
local modified = 1
if checksum ~= '' then
  if redis.call('GET', checksum_key) == checksum then
    modified = 0
  end
  redis.call('SET', checksum_key, checksum)
end
return {'ok', tonumber(ARGV[3]), modified}
