-- For each trigger set in KEYS, the functions listening: {slug1, config1, slug2, config2, ...}.
-- ARGV[1]: the functions hash
local out = {}
for i = 1, #KEYS do
  local slugs = redis.call('SMEMBERS', KEYS[i])
  local pairs_ = {}
  if #slugs > 0 then
    local configs = redis.call('HMGET', ARGV[1], unpack(slugs))
    for j = 1, #slugs do
      if configs[j] then
        pairs_[#pairs_ + 1] = slugs[j]
        pairs_[#pairs_ + 1] = configs[j]
      end
    end
  end
  out[i] = pairs_
end
return out
