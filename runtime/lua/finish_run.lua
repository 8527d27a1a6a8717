-- End a run: record its output or error, start its retention clock, index it as done.
-- KEYS: run, events, memo, stack, steps, runs_active, runs_done, timers
-- ARGV: fence_field, fence, status, result_field ('output' or 'error'), result_blob, now_ms, retention_s
local why = refuse(KEYS[1], ARGV[1], ARGV[2])
if why then
  return why
end
redis.call('HSET', KEYS[1], 'status', ARGV[3], ARGV[4], ARGV[5], 'ended', ARGV[6])
local timer = redis.call('HGET', KEYS[1], 'timer')
if timer then
  redis.call('ZREM', KEYS[8], timer)
end
redis.call('HDEL', KEYS[1], 'wake_at', 'timer')
local ttl = tonumber(ARGV[7])
for i = 1, 5 do
  redis.call('EXPIRE', KEYS[i], ttl)
end
local run_id = string.match(KEYS[1], '{(.-)}')
redis.call('ZREM', KEYS[6], run_id)
redis.call('ZADD', KEYS[7], ARGV[6], run_id)
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', tonumber(ARGV[6]) - ttl * 1000)
return 'ok'
