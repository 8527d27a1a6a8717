-- Deliver a 'run' message of the outbox (runtime/outbox.py): create the run as create_run.lua does
-- (put in front of this text as a local function by runtime/scripts.py, see CALLS), once per
-- message: the reply is kept under the message's id, and a redelivery gets it back, writing nothing.
-- KEYS: the message's received key (in this shard), then create_run's KEYS
-- ARGV: how long to keep the reply (s), then create_run's ARGV
-- Returns {0 for a first delivery or 1 for a repeated one, create_run's reply (msgpack)}.
local done = redis.call('GET', KEYS[1])
if done then
  return {1, done}
end
local blob = cmsgpack.pack(create_run({unpack(KEYS, 2)}, {unpack(ARGV, 2)}))
redis.call('SET', KEYS[1], blob, 'EX', ARGV[1])
return {0, blob}
