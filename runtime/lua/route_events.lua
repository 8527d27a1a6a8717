-- For each trigger set, the functions listening: {slug1, config1, slug2, config2, ...}, after the
-- registry's version (false when none was written yet).
-- KEYS: the functions hash, then the trigger sets
local out = {}
for i = 2, #KEYS do
  local slugs = redis.call('SMEMBERS', KEYS[i])
  local pairs_ = {}
  if #slugs > 0 then
    local configs = redis.call('HMGET', KEYS[1], unpack(slugs))
    for j = 1, #slugs do
      if configs[j] then
        pairs_[#pairs_ + 1] = slugs[j]
        pairs_[#pairs_ + 1] = configs[j]
      end
    end
  end
  out[i - 1] = pairs_
end
return {redis.call('GET', KEY_FUNCTIONS_VERSION), out}
