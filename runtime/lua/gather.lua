-- Debounce and event batching (runtime/gather.py): helpers of create_run.lua, one of its libraries
-- (runtime/scripts.py LIBRARIES: after the prelude and outside create_run's body, so they take what
-- they need as arguments rather than read its ARG). An event of a function that gathers events
-- either joins the open run of its key (gather_join), or creates a run whose first job waits until
-- it fires (gather_due, gather_open).
-- create_run's ARG.gather: 'debounce|<period ms>|<timeout ms, 0: none>|<event ts>|<key shown>' or
--             'batch|<max size>|<timeout ms>|<max bytes>|<key shown>'; then the pointer key
--             (keys.debounce or keys.batch: the run gathering the key's events) is the last of KEYS.
-- A run is open while its first job waits on its queue, unclaimed and not yet due: once a worker
-- claimed it, or its time came, the run is closed and the next event opens a new one. Every
-- decision is read from the queue in the same script that writes it, so an event joins exactly one
-- run and a run's first job is claimed once, however a full batch and its timeout meet.

-- How long a pointer outlives its run's fire time (a stale one is seen as such anyway).
local GATHER_SLACK_MS = 60000

local function parse_gather(text)
  local kind, a, b, c, shown = string.match(text, '^(%a+)|(%d+)|(%d+)|(%-?%d+)|(.*)$')
  if kind ~= 'debounce' and kind ~= 'batch' then
    error('create_run: malformed gather argument ' .. text)
  end
  return {kind = kind, a = tonumber(a), b = tonumber(b), c = tonumber(c), shown = shown}
end

-- The count and the body (the packed elements) of a msgpack array.
local function array_parts(blob)
  local b = string.byte(blob, 1)
  if b >= 0x90 and b <= 0x9f then
    return b - 0x90, string.sub(blob, 2)
  elseif b == 0xdc then
    local hi, lo = string.byte(blob, 2, 3)
    return hi * 256 + lo, string.sub(blob, 4)
  end
  error('create_run: an events blob that is no short msgpack array')
end

-- A batch's events are an array16 (0xdc + 2 bytes of count: msgpack readers accept it for any
-- count), so that an event is appended without rewriting the blob: APPEND its bytes, SETRANGE the
-- count. (cmsgpack would not do: unpacking and packing again may change the data, an empty map
-- becomes an array.)
local function array16_count(n)
  return string.char(math.floor(n / 256), n % 256)
end

-- The run a pointer names, while it is open (see above): run id, first job's id, its score.
local function open_run(pointer, queue, now)
  local run_id = redis.call('GET', pointer)
  if not run_id then
    return nil
  end
  local job_id = step_job_id(run_id, 0)
  local score = tonumber(redis.call('ZSCORE', queue, job_id) or '')
  if not score or score <= now or redis.call('EXISTS', key_in_progress(job_id)) == 1 then
    return nil
  end
  -- gather_until: a run whose claim loaded nothing (and whose worker died) is queued and not
  -- started, but its time came all the same
  local got = redis.call('HMGET', key_run(run_id), 'status', 'started', 'gather_until')
  if got[1] ~= STATUS_QUEUED or got[2] or (tonumber(got[3] or '') or 0) <= now then
    return nil
  end
  return run_id, job_id, score
end

-- Move an open run's first job to ``due`` (keeping its key alive as long past it as before).
local function move_job(queue, job_id, score, due, now)
  redis.call('ZADD', queue, 'XX', due, job_id)
  local ttl = redis.call('PTTL', key_job(job_id))
  if ttl > 0 and due > score then
    redis.call('PEXPIRE', key_job(job_id), ttl + (due - score))
  end
  signal_queue(queue, due, now)
end

-- Start an open batch now (it is full, or the next event would take it past its bytes).
local function start_batch(pointer, queue, run, job_id, score, now)
  redis.call('HSET', run, 'gather_until', now)
  move_job(queue, job_id, score, now, now)
  redis.call('DEL', pointer)
end

-- The event (``blob``: the msgpack array of it, ``event_ids``: its id) joins its key's open run:
-- create_run's reply, {0, run id} (no run created: the event joined that run, or was a debounced
-- event older than the run's and ignored), or nil when no run is open (the caller creates one).
local function gather_join(keys, g, now, blob, event_ids)
  local pointer, queue = keys[#keys], keys[6]
  local run_id, job_id, score = open_run(pointer, queue, now)
  if not run_id then
    return nil
  end
  local run, events = key_run(run_id), key_events(run_id)
  if g.kind == 'debounce' then
    redis.call('HINCRBY', run, 'gather_n', 1)
    if g.c < tonumber(redis.call('HGET', run, 'gather_ts') or '0') then
      redis.call('HINCRBY', run, 'gather_ignored', 1)
      return {0, run_id}
    end
    local due = now + g.a
    local deadline = tonumber(redis.call('HGET', run, 'gather_deadline') or '')
    if deadline and deadline < due then
      due = deadline
    end
    redis.call('SET', events, blob)
    redis.call('HSET', run, 'event_ids', event_ids, 'state_bytes', string.len(blob), 'gather_ts', g.c, 'gather_until',
      due)
    move_job(queue, job_id, score, due, now)
    redis.call('PEXPIRE', pointer, due - now + GATHER_SLACK_MS)
    return {0, run_id}
  end
  local _, body = array_parts(blob)
  local got = redis.call('HMGET', run, 'gather_n', 'state_bytes', 'event_ids')
  local n, size = tonumber(got[1] or '0'), tonumber(got[2] or '0')
  if n >= g.a or size + string.len(body) > g.c then
    -- full already (its function's size shrank since) or too large with this event: it starts now,
    -- and the event opens the next batch
    start_batch(pointer, queue, run, job_id, score, now)
    return nil
  end
  n = n + 1
  redis.call('APPEND', events, body)
  redis.call('SETRANGE', events, 1, array16_count(n))
  redis.call('HSET', run, 'gather_n', n, 'state_bytes', size + string.len(body), 'event_ids',
    (got[3] or '') .. ',' .. event_ids)
  if n >= g.a then
    start_batch(pointer, queue, run, job_id, score, now)
  end
  return {0, run_id}
end

-- When a new run of this gathering fires, unless later events move it.
local function gather_due(g, now)
  if g.kind == 'batch' then
    return now + g.b
  end
  if g.b > 0 and g.b < g.a then
    return now + g.b
  end
  return now + g.a
end

-- Record a new run's gathering (create_run just created it from ``blob``, its first job queued at
-- ``due``) and point its key at it.
local function gather_open(keys, g, run_id, now, due, blob)
  local run = key_run(run_id)
  redis.call('HSET', run, 'gather', g.kind, 'gather_key', g.shown, 'gather_until', due, 'gather_n', 1)
  if g.kind == 'debounce' then
    redis.call('HSET', run, 'gather_ts', g.c)
    if g.b > 0 then
      redis.call('HSET', run, 'gather_deadline', now + g.b)
    end
  else
    local count, body = array_parts(blob)
    local array16 = '\220' .. array16_count(count) .. body
    redis.call('SET', key_events(run_id), array16)
    redis.call('HSET', run, 'gather_max', g.a, 'state_bytes', string.len(array16))
  end
  redis.call('SET', keys[#keys], run_id, 'PX', due - now + GATHER_SLACK_MS)
end
