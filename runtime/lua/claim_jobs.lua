-- Claim due jobs for one worker in one round trip, and keep the queue's wake-ups going.
-- KEYS: queue, ready list, mover lease, mover's wake time, the shard's outbox and timers
-- ARGV: now_ms, lease_ms, free slots, lease token (this worker's), mover lease ms, scan limit, tidy
--       (1: drop the ready list's tokens if nothing is left to claim; 0: the caller found it empty),
--       the runs the worker has cached ('<run id> <memo entries cached>' lines, one string: a claim
--       reads it only when it claims a job), the mover's grace (ms), the shard's chores check (''
--       for none, else the age in ms past which a timer is overdue), then the ids of the jobs the
--       worker runs now
--
-- A claimed job gets arq's in-progress lock (valued with this worker's token, expiring with the
-- lease) and its try counted (arq's retry counter), and its score moves to the lease's end: the job
-- stays on the queue, but the queue's due part holds only jobs nobody runs, and a job whose lease
-- lapsed (its worker died) comes due again by itself.
--
-- Then the wake-ups: a token stays on the ready list while due jobs remain unclaimed (the next
-- idle worker takes them), none when none do. And the mover: the caller becomes (or stays) the
-- worker that wakes on the queue's earliest delayed job when it holds the lease, when nobody does,
-- when the holder means to wake later than that job is due (one was enqueued since), or when the
-- holder's wake time passed more than the grace ago: a live mover claims at its wake time, which
-- moves its wake time past now, so it died (or stalls); its delayed jobs must not wait for its
-- lease to lapse.
--
-- Each claimed stepq job that advances a run (kinds step, wake, planned) is also loaded, as
-- load_run.lua would load it when the job starts (the prelude's load_run, with its side effects: the
-- fence, a wake-up's memo, the status, 'started'), so that the job runs without another round trip:
-- its entry carries {run id, known length sent, load_run's reply...}, or false when the job was not
-- loaded: its payload is no stepq job this script can read (the worker's own path reports it), it is
-- a job the worker runs already (its lease lapsed while Redis was away: the worker holds the run's
-- fence and goes on), or the load raised an error (the worker's load_run call meets it again).
--
-- Returns {{id, payload, try, score, preload, ...}, {poison id, reason, ...}, next_due, mover_wake}: poison
-- entries no worker can run (a job key gone or of the wrong type...: the caller moves them to the
-- dead letters, so that a person sees what was lost); next_due is the earliest delayed job's due
-- time for the mover (-1: none), or -2 when the caller is not the mover; mover_wake is when the
-- queue's mover (the caller or not) means to wake (-1: it means nothing), for the hint that
-- workers watch (workers/mover_watch.py). With a chores check, a fifth entry says which of the
-- shard's chores have work (1: an outbox message is due, 2: a timer is overdue; their sum): the
-- worker's idle checks look for it without a command of their own (workers/shard_chores.py).
-- True for the errors of a key that holds what no job's key can (the entry is poison); any other
-- error is raised.
local function poison_error(reply)
  if type(reply) ~= 'table' or not reply.err then
    return false
  end
  if string.find(reply.err, '^WRONGTYPE') or string.find(reply.err, 'not an integer') then
    return true
  end
  error(reply)
end

local tag = tag_of_key(KEYS[1])

-- An integer (msgpack decodes a float of integral value as the same Lua number: only Python's
-- check tells them apart, and a float position is no job stepq writes).
local function integral(x)
  return type(x) == 'number' and x == math.floor(x) and x > -math.huge and x < math.huge
end

-- What a job's payload asks, when it is a stepq job whose run a load claims (as JobSpec.from_payload
-- and arq's job format read it): {run_id, position, kind, step_key}; nil for anything else.
local function loadable(payload)
  local decoded, job = pcall(cmsgpack.unpack, payload)
  if not decoded or type(job) ~= 'table' or job.f ~= ADVANCE or type(job.et) ~= 'number' then
    return nil
  end
  -- the function is called with the one argument, no keyword arguments
  if type(job.a) ~= 'table' or #job.a ~= 1 or type(job.k) ~= 'table' or next(job.k) ~= nil then
    return nil
  end
  local spec = job.a[1]
  if type(spec) ~= 'table' or type(spec.r) ~= 'string' or not integral(spec.p) then
    return nil
  end
  if spec.a ~= nil and not integral(spec.a) then
    return nil
  end
  local kind = spec.k or 'step'
  if JOB_KINDS[kind] == nil or (JOB_KINDS[kind] and type(spec.s) ~= 'string') then
    return nil
  end
  if kind ~= 'step' and kind ~= 'wake' and kind ~= 'planned' then
    return nil -- a timer, deadline or invoke job loads nothing
  end
  local step_key = ''
  if type(spec.s) == 'string' then
    step_key = spec.s
  end
  return {spec.r, spec.p, kind, step_key}
end

-- The worker's cached memo lengths by run id, and the jobs it runs (ARGV from 8 on).
local function worker_view()
  local known, held = {}, {}
  for run_id, len in string.gmatch(ARGV[8] or '', '([^ \n]+) (%d+)') do
    known[run_id] = tonumber(len)
  end
  for i = 11, #ARGV do
    held[ARGV[i]] = true
  end
  return known, held
end

-- load_run for a claimed job, or false (see above). ``spec``: loadable(payload).
local function preload(id, spec, known, held)
  if held[id] then
    return false
  end
  if not spec then
    return false
  end
  local run_id, kind, step_key = spec[1], spec[3], spec[4]
  if tag_of(run_id) ~= tag then
    return false -- its run's keys live in another shard's slot (no job of stepq's names such a run)
  end
  local fence_field = FENCE
  if kind == 'planned' then
    fence_field = FENCE .. ':' .. step_key
  end
  local sent = known[run_id] or -1
  local ok, loaded = pcall(load_run, run_id, spec[2], sent, fence_field, ARGV[1], kind, step_key)
  if not ok then
    return false
  end
  table.insert(loaded, 1, sent)
  table.insert(loaded, 1, run_id)
  return loaded
end

local now, lease, free = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local token = ARGV[4]
local known, held
local out, poison = {}, {}
local claimed, more = 0, false
-- When the earliest lock of a due job lapses (ms): a lock lives a few ms past its job's score (the
-- score is the claimer's clock plus the lease, the lock's expiry Redis's clock when the claim ran),
-- and a mover woken at the score in between must wake again then, not drop its timer.
local locked_until = nil
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[6]))
for i = 1, #due, 2 do
  local id, score = due[i], tonumber(due[i + 1])
  if score == nil or score ~= score or score == -math.huge then
    poison[#poison + 1] = id
    poison[#poison + 1] = 'score is not a finite number'
  elseif claimed >= free then
    more = true
    break
  elseif tag_of(id) ~= tag then
    -- its keys live in another shard's slot: no script of this shard may touch them
    poison[#poison + 1] = id
    poison[#poison + 1] = "its id names another shard than its queue's"
  elseif redis.call('EXISTS', key_in_progress(id)) == 1 then
    local ttl = redis.call('PTTL', key_in_progress(id))
    if ttl >= 0 and (locked_until == nil or now + ttl + 1 < locked_until) then
      locked_until = now + ttl + 1
    end
  else
    -- pcall: a key of the wrong type must not stop the claim (nor every later one); any other
    -- error (out of memory, read-only...) stops it, and the worker tries again later
    local payload = redis.pcall('GET', key_job(id))
    if poison_error(payload) then
      poison[#poison + 1] = id
      poison[#poison + 1] = 'its job key ' .. key_job(id) .. ' holds a ' .. redis.call('TYPE', key_job(id)).ok ..
        ', not a string'
    elseif not payload then
      poison[#poison + 1] = id
      poison[#poison + 1] = 'its job key ' .. key_job(id) .. ' is gone (expired or evicted)'
    else
      local spec = loadable(payload)
      if not known then
        known, held = worker_view()
      end
      -- A job that runs the function's code takes its run's concurrency slots (slots.lua), or waits
      -- off the queue for them. A job this worker runs already (its lease lapsed while Redis was
      -- away) keeps what it holds.
      local admitted = not spec or held[id] or tag_of(spec[1]) ~= tag or
        SLOTS.claim_gate(KEYS[1], id, score, now, lease, spec[3])
      local try = admitted and redis.pcall('INCR', key_retry(id))
      if not admitted then
        -- it waits in its lane for a slot: not claimed
      elseif poison_error(try) then
        poison[#poison + 1] = id
        local kind = redis.call('TYPE', key_retry(id)).ok
        if kind == 'string' then
          poison[#poison + 1] = 'its retry key ' .. key_retry(id) .. ' holds no integer'
        else
          poison[#poison + 1] = 'its retry key ' .. key_retry(id) .. ' holds a ' .. kind .. ', not a string'
        end
      else
        redis.call('PEXPIRE', key_retry(id), JOB_TTL_MS)
        redis.call('SET', key_in_progress(id), token, 'PX', lease)
        redis.call('ZADD', KEYS[1], now + lease, id)
        out[#out + 1] = id
        out[#out + 1] = payload
        out[#out + 1] = try
        out[#out + 1] = due[i + 1]
        out[#out + 1] = preload(id, spec, known, held)
        claimed = claimed + 1
      end
    end
  end
end
if #due == 2 * tonumber(ARGV[6]) then
  more = true -- the scan stopped at its limit: there may be more
end
if more then
  push_token(KEYS[2])
elseif ARGV[7] == '1' then
  redis.call('DEL', KEYS[2]) -- tokens left would only wake workers for nothing
end

local first = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local next_due = -1
if first[2] then
  next_due = tonumber(first[2])
end
if locked_until and (next_due < 0 or locked_until < next_due) then
  next_due = locked_until
end
local holder = redis.call('GET', KEYS[3])
local wake_at = tonumber(redis.call('GET', KEYS[4]) or '') or -1
local overdue = wake_at >= 0 and wake_at < now - tonumber(ARGV[9])
local chores = 0
if ARGV[10] ~= '' then
  if redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 1)[1] then
    chores = chores + 1
  end
  if redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now - tonumber(ARGV[10]), 'LIMIT', 0, 1)[1] then
    chores = chores + 2
  end
end
if holder == token or not holder or overdue or (next_due >= 0 and (wake_at < 0 or wake_at > next_due)) then
  redis.call('SET', KEYS[3], token, 'PX', ARGV[5])
  if next_due >= 0 then
    redis.call('SET', KEYS[4], next_due, 'PX', ARGV[5]) -- it means nothing once the lease lapsed
  elseif wake_at >= 0 then
    redis.call('DEL', KEYS[4])
  end
  return {out, poison, next_due, next_due, chores}
end
return {out, poison, -2, wake_at, chores}
