-- Replace an app's function set: configs, and the event -> function trigger index.
-- ARGV: prefix, app_id, n, then per function: slug, config, n_events, event names...
local prefix, app = ARGV[1], ARGV[2]
local app_key = prefix .. ':app:' .. app .. ':functions'
local functions = prefix .. ':functions'
local modified = 0
for _, slug in ipairs(redis.call('SMEMBERS', app_key)) do
  local fn_events = prefix .. ':fn:' .. slug .. ':events'
  for _, name in ipairs(redis.call('SMEMBERS', fn_events)) do
    redis.call('SREM', prefix .. ':trigger:' .. name, slug)
  end
  redis.call('DEL', fn_events)
  redis.call('HDEL', functions, slug)
end
redis.call('DEL', app_key)
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  local slug, config, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  redis.call('HSET', functions, slug, config)
  redis.call('SADD', app_key, slug)
  for k = 1, n do
    local name = ARGV[i + 2 + k]
    redis.call('SADD', prefix .. ':trigger:' .. name, slug)
    redis.call('SADD', prefix .. ':fn:' .. slug .. ':events', name)
  end
  i = i + 3 + n
end
return tonumber(ARGV[3])
