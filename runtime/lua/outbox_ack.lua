-- Acknowledge an outbox message (runtime/outbox.py): remove it from its shard's outbox, and, in the
-- same write, record what its delivery did (mode 'outcome': append an outcome to the event's
-- outcomes list) or keep it as a dead letter (mode 'dead': it could not be read). A message
-- acknowledged already (two deliveries raced) changes nothing.
-- KEYS: the outbox, its bodies, the event's outcomes key or the dead letters (else the outbox again)
-- ARGV: message id, mode ('', 'outcome', 'dead'), the outcome or dead record (msgpack), dead_max
-- Returns 1 when this call acknowledged the message, 0 when it was acknowledged already.
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] == 'outcome' then
  local blob = redis.call('GET', KEYS[3])
  if blob then
    local list = cmsgpack.unpack(blob)
    list[#list + 1] = cmsgpack.unpack(ARGV[3])
    redis.call('SET', KEYS[3], cmsgpack.pack(list), 'KEEPTTL')
  end
elseif ARGV[2] == 'dead' then
  redis.call('LPUSH', KEYS[3], ARGV[3])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
end
return 1
