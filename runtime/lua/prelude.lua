-- Helpers shared by every stepq script (prepended by runtime/scripts.py).

local TERMINAL = {completed = true, failed = true, cancelled = true}

-- Write a job in arq's format unless a job or result with that id exists (arq's own dedupe rule).
local function enqueue(job_key, result_key, queue_key, payload, score, ttl_ms)
  if redis.call('EXISTS', job_key, result_key) > 0 then
    return 0
  end
  local job_id = string.sub(job_key, 9) -- strip 'arq:job:'
  redis.call('SET', job_key, payload, 'PX', ttl_ms)
  redis.call('ZADD', queue_key, score, job_id)
  return 1
end

-- nil when the run may move on; otherwise why not.
local function refuse(run_key, fence_field, fence)
  local got = redis.call('HMGET', run_key, 'status', fence_field)
  if not got[1] then
    return 'missing'
  end
  if TERMINAL[got[1]] then
    return 'done'
  end
  if fence ~= '' and got[2] ~= fence then
    return 'fenced'
  end
  return nil
end
