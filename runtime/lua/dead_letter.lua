-- Move a poison queue entry (or a whole queue key of the wrong type) aside and record it among the
-- dead letters, in one step: the entry cannot vanish without its record, nor stay and be recorded.
-- KEYS: queue, dead letters (list), then member mode: the member's in-progress lock; queue mode:
--       the key to rename the queue to
-- ARGV: mode ('member' | 'queue'), record (JSON object), max_len, then member mode: the member, now_ms
-- Returns the stored record (JSON), or false when there was nothing to move (gone, or a sound queue).
local mode, max_len, target = ARGV[1], tonumber(ARGV[3]), ARGV[4]
local record = cjson.decode(ARGV[2])
-- checked before anything moves: a script stops at an error without undoing its earlier writes
local list_type = redis.call('TYPE', KEYS[2]).ok
if list_type ~= 'list' and list_type ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' holds a ' .. list_type .. ', not a list of dead letters')
end
if mode == 'member' then
  local score = redis.call('ZSCORE', KEYS[1], target)
  if not score then
    return false
  end
  redis.call('ZREM', KEYS[1], target)
  -- a worker that claimed the entry before seeing what it was holds its lock: let it go, and its
  -- concurrency slots (only a member naming a run of this queue's shard can hold any)
  redis.call('DEL', KEYS[3])
  if tag_of(target) == tag_of_key(KEYS[1]) then
    pcall(SLOTS.release, target, tonumber(ARGV[5])) -- pcall: a poison member may name any key
  end
  record.score = score
else
  local kind = redis.call('TYPE', KEYS[1]).ok
  if kind == 'zset' or kind == 'none' then
    return false
  end
  redis.call('RENAME', KEYS[1], KEYS[3])
  record.type = kind
end
local stored = cjson.encode(record)
redis.call('LPUSH', KEYS[2], stored)
redis.call('LTRIM', KEYS[2], 0, max_len - 1)
return stored
