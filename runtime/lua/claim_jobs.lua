-- Claim due jobs for one worker in one round trip (arq claims each with WATCH/MULTI, four round
-- trips per id, including ids that other workers are running).
-- KEYS: queue, then each job's in-progress lock (in the order of the ids in ARGV)
-- ARGV: now_ms, lease_ms, limit, lease token (this worker's: the lock's value), job ids...
-- Returns {{id1, score1, id2, score2, ...}, {poison id, ...}}: the jobs claimed (their arq
-- in-progress lock is set), and ids whose score is not a finite number (-inf, inf, nan), which no
-- worker can run and which the caller moves aside rather than claim.
local now, lease, limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local out, poison = {}, {}
for i = 5, #ARGV do
  if #out >= 2 * limit then
    break
  end
  local id = ARGV[i]
  local lock = KEYS[i - 3]
  if redis.call('EXISTS', lock) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score then
      local due = tonumber(score)
      if due == nil or due ~= due or due == math.huge or due == -math.huge then
        poison[#poison + 1] = id
      elseif due <= now then
        redis.call('SET', lock, ARGV[4], 'PX', lease)
        out[#out + 1] = id
        out[#out + 1] = score
      end
    end
  end
end
return {out, poison}
