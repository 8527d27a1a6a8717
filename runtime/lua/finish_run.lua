-- End a run: record its output or error, start its retention clock, and hand an invoked run's
-- result to its parent, atomically.
-- KEYS: run
-- ARGV: run_id, fence_field, fence, status, result_field ('output' or 'error'), result_blob, now_ms,
--       retention_s
local why = refuse(KEYS[1], ARGV[2], ARGV[3])
if why then
  return why
end
local now = tonumber(ARGV[7])
redis.call('HSET', KEYS[1], 'status', ARGV[4], ARGV[5], ARGV[6], 'ended', now)
close_run(ARGV[1], now, tonumber(ARGV[8]))
local parent = redis.call('HGET', KEYS[1], 'parent')
if parent then
  local parent_id, key = string.match(parent, '^(.-)|(.*)$')
  -- the parent's memo is {"data": output} or {"error": error}: a one-entry msgpack map
  local wrapped
  if ARGV[5] == 'output' then
    wrapped = '\129\164data' .. ARGV[6]
  else
    wrapped = '\129\165error' .. ARGV[6]
  end
  resolve_pending(parent_id, key, wrapped, '', now, '', '')
end
return 'ok'
