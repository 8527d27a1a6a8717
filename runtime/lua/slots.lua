-- Concurrency limits (runtime/concurrency.py): a job of a run with concurrency keys takes a slot of
-- each key when a worker claims it (claim_jobs.lua) and gives them back when it ends; a job that
-- finds a key full waits off the queue, in its lane, and is handed a slot by the release that frees
-- one. Nothing polls: a waiting job costs no command until a slot frees.
--
-- Keys (all in the run's shard): key_slots(tag, key id): zset holder -> lease end (a job's, renewed
-- with its lease, so a dead worker's slot lapses by itself; a run-level slot is held by the run id
-- at +inf until the run ends); key_slot_waiters(tag, key id): zset lane -> virtual time (the lane
-- served least goes first: fair between keys); key_lane(tag, lane id): zset job id -> order (runs in
-- progress first, then by due time, priority included).
-- The run's record holds 'ck' (step keys), 'rk' (run keys: '<limit>\t<key id>\t<shown>' lines),
-- 'lane', 'rslot' ('1' while the run holds its run-level slots), and while a job waits 'slot_wait'
-- (why), 'slot_wait_at'; 'waited' keeps the last reason and 'held_ms' the time waited in all.

-- How long a slot is reserved for a job a release put on the queue, until a worker claims it (the
-- claim replaces it with the worker's lease). A job not claimed by then is gated again at its claim.
local SLOT_RESERVE_MS = 30000
-- A release admits at most this many waiting jobs (or moves this many lanes) per key.
local PUMP_MAX = 32
-- Lane order: a job of a run already in progress goes ahead of any run's first job.
local NEW_START_BEHIND = 1e13

local function run_of_job(job_id)
  return string.match(job_id, '^([^:]*)')
end

local function parse_keys(text)
  local out = {}
  if text then
    for limit, id, shown in string.gmatch(text, '(%d+)\t([^\t\n]+)\t([^\n]*)') do
      out[#out + 1] = {limit = tonumber(limit), id = id, shown = shown}
    end
  end
  return out
end

-- The run's concurrency state, or nil when its function has no concurrency limit.
local function slots_of_run(run_key)
  local f = redis.call('HMGET', run_key, 'lane', 'ck', 'rk', 'rslot', 'started', 'q', 'status')
  if not f[1] then
    return nil
  end
  return {lane = f[1], step = parse_keys(f[2]), run = parse_keys(f[3]), holds_run = f[4] == '1',
    started = f[5] ~= false, q = f[6], status = f[7]}
end

-- Whether ``key`` has a slot for ``holder`` (what it holds itself not counted). Lapsed leases (a
-- worker died, or paused past its lease) stop counting, and go.
local function room(tag, key, holder, now)
  local slots = key_slots(tag, key.id)
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', '(' .. now)
  local used = redis.call('ZCARD', slots)
  if redis.call('ZSCORE', slots, holder) then
    used = used - 1
  end
  return used < key.limit
end

-- The first key that has no slot for this job (or its run), or nil.
local function full_key(tag, s, job_id, run_id, now)
  for _, key in ipairs(s.step) do
    if not room(tag, key, job_id, now) then
      return key
    end
  end
  if not s.holds_run then
    for _, key in ipairs(s.run) do
      if not room(tag, key, run_id, now) then
        return key
      end
    end
  end
  return nil
end

-- Whether the job holds a live slot of each step key, and its run its run-level slots.
local function holds(tag, s, job_id, now)
  if #s.run > 0 and not s.holds_run then
    return false
  end
  for _, key in ipairs(s.step) do
    local until_ms = tonumber(redis.call('ZSCORE', key_slots(tag, key.id), job_id) or '')
    if not until_ms or until_ms < now then
      return false
    end
  end
  return true
end

-- Take the job's slots until ``until_ms`` (and the run's run-level slots, for good).
local function take(tag, s, job_id, run_id, until_ms)
  for _, key in ipairs(s.step) do
    redis.call('ZADD', key_slots(tag, key.id), until_ms, job_id)
  end
  if not s.holds_run and #s.run > 0 then
    for _, key in ipairs(s.run) do
      redis.call('ZADD', key_slots(tag, key.id), '+inf', run_id)
    end
    redis.call('HSET', key_run(run_id), 'rslot', '1')
    s.holds_run = true
  end
end

-- Why a job waits, for people (``stepq run``).
local function held_reason(key)
  local what = 'concurrency'
  if string.sub(key.id, 1, 1) == 'r' then
    what = 'run concurrency'
  end
  local for_key = ''
  if key.shown ~= '' then
    for_key = ' for key ' .. key.shown
  end
  return what .. ' limit ' .. key.limit .. ' reached' .. for_key
end

local function note_admitted(run_key, now)
  local since = tonumber(redis.call('HGET', run_key, 'slot_wait_at') or '')
  if since then
    redis.call('HINCRBY', run_key, 'held_ms', math.max(0, now - since))
    redis.call('HDEL', run_key, 'slot_wait', 'slot_wait_at')
  end
end

-- Put a lane among the waiters of ``key_id`` (unless it is there): a lane new to the key starts at
-- the virtual time of the lane served next, so it neither jumps the others nor waits behind them all.
local function register(tag, key_id, lane_id)
  local waiters = key_slot_waiters(tag, key_id)
  if redis.call('ZSCORE', waiters, lane_id) then
    return
  end
  local first = redis.call('ZRANGE', waiters, 0, 0, 'WITHSCORES')
  redis.call('ZADD', waiters, tonumber(first[2] or '0'), lane_id)
end

-- Hand the free slots of one key to the jobs waiting for it, fairly: the lane with the lowest virtual
-- time first, its first job (in progress first); one admitted job costs its lane 1. A lane whose job
-- another key blocks moves to that key's waiters. The admitted job goes on its queue, holding its
-- slots, and a worker is woken for it.
local function pump(tag, key_id, now)
  local waiters = key_slot_waiters(tag, key_id)
  for _ = 1, PUMP_MAX do
    local head = redis.call('ZRANGE', waiters, 0, 0, 'WITHSCORES')
    if #head == 0 then
      return
    end
    local lane_id, vt = head[1], tonumber(head[2])
    local lane = key_lane(tag, lane_id)
    local first = redis.call('ZRANGE', lane, 0, 0)
    if #first == 0 then
      redis.call('ZREM', waiters, lane_id)
    else
      local job_id = first[1]
      local run_id = run_of_job(job_id)
      local run_key = key_run(run_id)
      local s = slots_of_run(run_key)
      if not s or TERMINAL[s.status] or redis.call('EXISTS', key_job(job_id)) == 0 then
        redis.call('ZREM', lane, job_id) -- its run ended, or the job is gone: nothing to admit
      else
        local full = full_key(tag, s, job_id, run_id, now)
        if not full then
          take(tag, s, job_id, run_id, now + SLOT_RESERVE_MS)
          redis.call('ZREM', lane, job_id)
          redis.call('ZADD', key_queue(tag, s.q), now, job_id)
          push_token(key_ready(tag, s.q))
          note_admitted(run_key, now)
          if redis.call('ZCARD', lane) == 0 then
            redis.call('ZREM', waiters, lane_id)
          else
            redis.call('ZADD', waiters, vt + 1, lane_id)
          end
        elseif full.id == key_id then
          return
        else
          redis.call('ZREM', waiters, lane_id)
          register(tag, full.id, lane_id)
        end
      end
    end
  end
end

local function pump_all(tag, s, now)
  for _, key in ipairs(s.step) do
    pump(tag, key.id, now)
  end
  for _, key in ipairs(s.run) do
    pump(tag, key.id, now)
  end
end

-- A claim found a due job of a gated kind (one that runs the function's code). True: the worker
-- claims it, holding its slots until ``now + lease``. False: it waits in its lane, off the queue
-- (``queue_key``), until a release admits it. ``score``: its due time on the queue (its order);
-- ``kind``: the job's.
SLOTS.claim_gate = function(queue_key, job_id, score, now, lease, kind)
  local run_id = run_of_job(job_id)
  local tag = tag_of(run_id)
  local run_key = key_run(run_id)
  local s = slots_of_run(run_key)
  if not s or TERMINAL[s.status] then
    return true -- no limit; or the run ended, and the job finds it so and ends
  end
  if holds(tag, s, job_id, now) then
    take(tag, s, job_id, run_id, now + lease)
    return true
  end
  local lane = key_lane(tag, s.lane)
  local order = tonumber(score)
  if not s.started then
    order = order + NEW_START_BEHIND
  end
  if redis.call('ZCARD', lane) == 0 and not full_key(tag, s, job_id, run_id, now) then
    local waiting = false
    for _, keys in ipairs({s.step, s.run}) do
      for _, key in ipairs(keys) do
        waiting = waiting or redis.call('EXISTS', key_slot_waiters(tag, key.id)) == 1
      end
    end
    if not waiting then
      take(tag, s, job_id, run_id, now + lease) -- the common case: a slot is free and nobody waits
      return true
    end
  end
  -- Others wait for these keys: queue behind them in the lane (in order), then let the fair
  -- hand-over decide, which may admit this very job.
  redis.call('ZREM', queue_key, job_id)
  redis.call('ZADD', lane, order, job_id)
  local full = full_key(tag, s, job_id, run_id, now)
  register(tag, (full or s.step[1] or s.run[1]).id, s.lane)
  pump_all(tag, s, now)
  if redis.call('ZSCORE', queue_key, job_id) then
    take(tag, s, job_id, run_id, now + lease)
    return true
  end
  full = full_key(tag, s, job_id, run_id, now)
  local reason = 'waiting behind earlier runs for a concurrency slot'
  if full then
    reason = held_reason(full)
  end
  if not redis.call('HGET', run_key, 'slot_wait_at') then
    redis.call('HSET', run_key, 'slot_wait_at', now)
  end
  redis.call('HSET', run_key, 'slot_wait', reason, 'waited', reason)
  if kind == 'wake' then
    -- a sleep's end waiting for a slot: its timer would only make the timer sweep visit it again
    -- and again (the sweep revives lost wake-up jobs; this one waits in its lane)
    local timer = redis.call('HGET', run_key, 'timer')
    if timer then
      redis.call('ZREM', key_timers(tag), timer)
    end
  end
  return false
end

-- A job stopped running (ended, put back for later, or dead-lettered): its step slots go to the
-- jobs waiting for them.
SLOTS.release = function(job_id, now)
  local run_id = run_of_job(job_id)
  local s = slots_of_run(key_run(run_id))
  if not s then
    return
  end
  local tag = tag_of(run_id)
  for _, key in ipairs(s.step) do
    redis.call('ZREM', key_slots(tag, key.id), job_id)
  end
  pump_all(tag, s, now)
end

-- A job ended with its run's next job due now: the next job takes its slots, ahead of the runs
-- waiting to start (a run in progress goes first). False when it cannot (a lapsed lease let others
-- take the slots meanwhile): the slots are released and the next job is gated when claimed.
SLOTS.hand_over = function(job_id, next_id, run_id, now, until_ms)
  local s = slots_of_run(key_run(run_id))
  if not s then
    return true
  end
  local tag = tag_of(run_id)
  local all_held = true
  for _, key in ipairs(s.step) do
    local slots = key_slots(tag, key.id)
    local held_until = tonumber(redis.call('ZSCORE', slots, job_id) or '')
    redis.call('ZREM', slots, job_id)
    if held_until and held_until >= now then
      redis.call('ZADD', slots, until_ms, next_id) -- the same slot, passed on: no count changes
    else
      all_held = false
    end
  end
  if all_held and (s.holds_run or #s.run == 0) then
    return true -- every slot passed on as it was
  end
  if not full_key(tag, s, next_id, run_id, now) then
    take(tag, s, next_id, run_id, until_ms)
    return true
  end
  for _, key in ipairs(s.step) do
    redis.call('ZREM', key_slots(tag, key.id), next_id)
  end
  pump_all(tag, s, now)
  return false
end

-- A worker renewed a job's lease: its slots stay held as long.
SLOTS.renew = function(job_id, until_ms)
  local run_id = run_of_job(job_id)
  local s = slots_of_run(key_run(run_id))
  if s then
    for _, key in ipairs(s.step) do
      redis.call('ZADD', key_slots(tag_of(run_id), key.id), 'XX', until_ms, job_id)
    end
  end
end

-- A run ended (close_run): the idle jobs it drops leave their lane and give back the slots they
-- were reserved; the run's run-level slots go. A job a worker still runs gives its own back when
-- its worker ends it.
SLOTS.close_run = function(run_id, job_ids, now)
  local run_key = key_run(run_id)
  local s = slots_of_run(run_key)
  if not s then
    return
  end
  local tag = tag_of(run_id)
  local lane = key_lane(tag, s.lane)
  for _, job_id in ipairs(job_ids) do
    redis.call('ZREM', lane, job_id)
    if redis.call('EXISTS', key_in_progress(job_id)) == 0 then
      for _, key in ipairs(s.step) do
        redis.call('ZREM', key_slots(tag, key.id), job_id)
      end
    end
  end
  for _, key in ipairs(s.run) do
    redis.call('ZREM', key_slots(tag, key.id), run_id)
  end
  redis.call('HDEL', run_key, 'rslot', 'slot_wait', 'slot_wait_at')
  pump_all(tag, s, now)
end

-- Whether a job waits in its lane (it is off the queue, and nothing is lost).
SLOTS.waiting = function(job_id)
  local run_id = run_of_job(job_id)
  local lane = redis.call('HGET', key_run(run_id), 'lane')
  return lane and redis.call('ZSCORE', key_lane(tag_of(run_id), lane), job_id) ~= false
end
