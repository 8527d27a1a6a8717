-- Helpers shared by every stepq script (prepended by runtime/scripts.py).

local JOB_TTL_MS = 30 * 86400 * 1000

-- Concurrency limits' functions, defined in slots.lua (which scripts.py puts after this file).
local SLOTS = {}

-- A pcall's reply, or nil when it was an error.
local function type_safe(reply)
  if type(reply) == 'table' and reply.err then
    return nil
  end
  return reply
end

-- Leave one wake-up token on a queue's ready list (see signal_queue); a token nobody took goes
-- with the list after a minute (workers check their queue more often than that anyway). pcall: a
-- ready key of the wrong type gets no token and fails nothing; the workers repair it, and their
-- idle check finds the job meanwhile.
local TOKEN_TTL_MS = 60000
local function push_token(ready)
  if type_safe(redis.pcall('LLEN', ready)) == 0 then
    redis.call('LPUSH', ready, '1')
    redis.call('PEXPIRE', ready, TOKEN_TTL_MS)
  end
end

-- Wake a worker for a job queued on queue_key at ``score``: push a token on the queue's ready list
-- (idle workers block on it), unless the job is delayed and the queue's mover already means to wake
-- by then (``now``: the caller's clock; nil treats the job as due now). One token is enough: the
-- worker it wakes claims every due job it has room for and leaves a token if any remain.
local function signal_queue(queue_key, score, now)
  -- pcall: a wake-up key of the wrong type (workers repair it) must not fail the enqueue
  local tag, queue_id = tag_of_key(queue_key), queue_id_of(queue_key)
  if now and tonumber(score) > tonumber(now) then
    local wake_at = tonumber(type_safe(redis.pcall('GET', key_wake_at(tag, queue_id))) or '')
    if wake_at and wake_at <= tonumber(score) then
      return
    end
  end
  push_token(key_ready(tag, queue_id))
end

-- Write a job in arq's format unless a job or result with that id exists (arq's own dedupe rule).
-- Returns 1 when it wrote one.
local function put_job(job_key, result_key, queue_key, payload, score, ttl_ms)
  if redis.call('EXISTS', job_key, result_key) > 0 then
    return 0
  end
  redis.call('SET', job_key, payload, 'PX', ttl_ms)
  redis.call('ZADD', queue_key, score, job_id_of(job_key))
  return 1
end

-- A run's due-now job's score: ``priority`` (its record's 'prio', seconds; nil for none) moves it
-- ahead of the jobs due now (Inngest's priority factor), or, negative, later.
local function due_now(priority, now)
  return now - 1000 * (tonumber(priority or '0') or 0)
end

-- put_job, and wake a worker for the job (see signal_queue).
local function enqueue(job_key, result_key, queue_key, payload, score, ttl_ms, now)
  local added = put_job(job_key, result_key, queue_key, payload, score, ttl_ms)
  if added == 1 then
    signal_queue(queue_key, score, now)
  end
  return added
end

-- End a job that the caller ran, as finish_job.lua does, when its lock still holds the caller's
-- lease token; false when it does not (the caller ends it, or another worker took it over).
local function end_job(queue_key, job_id, token)
  local lock = key_in_progress(job_id)
  if redis.call('GET', lock) ~= token then
    return false
  end
  redis.call('DEL', lock, key_retry(job_id), key_job(job_id))
  redis.call('ZREM', queue_key, job_id)
  return true
end

-- Write a job (as put_job) already claimed by the caller, as claim_jobs.lua would claim it: its
-- lock holds the caller's token, its first try is counted, its score is the lease's end. It is on
-- the queue, so a crash of the caller hands it to another worker. False when the job existed.
local function take_new_job(job_key, result_key, queue_key, payload, ttl_ms, token, lease_ms, now)
  if put_job(job_key, result_key, queue_key, payload, now + tonumber(lease_ms), ttl_ms) == 0 then
    return false
  end
  local job_id = job_id_of(job_key)
  redis.call('SET', key_in_progress(job_id), token, 'PX', lease_ms)
  redis.call('SET', key_retry(job_id), 1, 'PX', JOB_TTL_MS)
  return true
end

-- nil when a run of ``status`` whose fence field holds ``current`` may move on for the holder of
-- ``fence`` ('' : unfenced); otherwise why not.
local function refusal(status, current, fence)
  if not status then
    return 'missing'
  end
  if TERMINAL[status] then
    return 'done'
  end
  if fence ~= '' and current ~= fence then
    return 'fenced'
  end
  return nil
end

-- refusal, reading the run's record.
local function refuse(run_key, fence_field, fence)
  local got = redis.call('HMGET', run_key, 'status', fence_field)
  return refusal(got[1], got[2], fence)
end

-- The default limits, as the calling script received them in its ARGV.
local function limits_of(max_state, retention)
  return {max_state = tonumber(max_state), retention = tonumber(retention)}
end

-- The limits a run lives within: its function's, kept in its record ('lim') when they are not the
-- defaults, else ``defaults``.
local function limits_in(lim, defaults)
  if lim then
    local max_state, retention = string.match(lim, '^(%d+),(%d+)$')
    if max_state then
      return {max_state = tonumber(max_state), retention = tonumber(retention)}
    end
  end
  return defaults
end

-- limits_in, reading the run's record.
local function run_limits(run_key, defaults)
  return limits_in(redis.call('HGET', run_key, 'lim'), defaults)
end

-- A wait (or cancellation rule) is a record in the event name's hash plus a member of one lookup set
-- (an equality index or the scan set); the run remembers where, under the field 'wait:<key>'.
local function register_wait(run_key, field, hash_key, set_key, member, record, paths_key, path)
  redis.call('HSET', hash_key, member, record)
  redis.call('SADD', set_key, member)
  if paths_key ~= '' then
    redis.call('SADD', paths_key, path)
  end
  redis.call('HSET', run_key, field, hash_key .. '\n' .. set_key .. '\n' .. member)
end

-- Register one wait described by a script's KEYS and ARGV (``Registration`` in runtime/waits.py):
-- keys[k], keys[k + 1] are its hash and lookup set, keys[k + 2] the paths set when it is indexed;
-- args[a..a + 3] its field, member, record and path ('' when not indexed). Returns the next k.
local function register_wait_from(run_key, keys, k, args, a)
  local path = args[a + 3]
  if path ~= '' then
    register_wait(run_key, args[a], keys[k], keys[k + 1], args[a + 1], args[a + 2], keys[k + 2], path)
    return k + 3
  end
  register_wait(run_key, args[a], keys[k], keys[k + 1], args[a + 1], args[a + 2], '', '')
  return k + 2
end

local function drop_wait(run_key, field, where)
  local hash_key, set_key, member = string.match(where, '^(.-)\n(.-)\n(.*)$')
  if hash_key then
    redis.call('HDEL', hash_key, member)
    redis.call('SREM', set_key, member)
  end
  redis.call('HDEL', run_key, field)
end

local function drop_all_waits(run_key)
  local fields = redis.call('HGETALL', run_key)
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 5) == 'wait:' then
      drop_wait(run_key, fields[i], fields[i + 1])
    end
  end
end

-- Everything a run's end shares: no waits, no timers, no pending jobs; indexed as done; expiring.
-- Drop a job of a run that ended, unless a worker holds it (that worker ends it). Its retry counter
-- goes too: arq set it when a worker started the job, and a worker killed since left it behind.
local function drop_idle_job(queue, job_id)
  if redis.call('EXISTS', key_in_progress(job_id)) == 0 then
    redis.call('ZREM', queue, job_id)
    redis.call('DEL', key_job(job_id), key_retry(job_id))
  end
end

-- List a run that ended among its shard's done runs (trimmed to the retention), not the active ones.
local function index_done(run_id, now, retention_s)
  local tag = tag_of(run_id)
  local done = key_runs_done(tag)
  redis.call('ZREM', key_runs_active(tag), run_id)
  redis.call('ZADD', done, now, run_id)
  redis.call('ZREMRANGEBYSCORE', done, '-inf', now - retention_s * 1000)
  index_ended(run_id, now, retention_s)
end

local function close_run(run_id, now, retention_s)
  local run, tag = key_run(run_id), tag_of(run_id)
  drop_all_waits(run)
  local queue = key_queue(tag, redis.call('HGET', run, 'q') or '')
  local dropped = redis.call('SMEMBERS', key_jobs(run_id))
  local timer = redis.call('HGET', run, 'timer')
  if timer then
    redis.call('ZREM', key_timers(tag), timer)
    local position = string.match(timer, '|([^|]*)$')
    dropped[#dropped + 1] = wake_job_id(run_id, position)
  end
  local next_job = redis.call('HGET', run, 'next_job')
  if next_job then
    dropped[#dropped + 1] = next_job
  end
  for _, job_id in ipairs(dropped) do
    -- delayed jobs of a run that ended would only find it ended; drop them now
    drop_idle_job(queue, job_id)
  end
  SLOTS.close_run(run_id, dropped, now)
  redis.call('DEL', key_jobs(run_id), key_pending(run_id))
  -- a run that ends asleep (cancelled) keeps its sleep among its steps, unfinished, as a run that ends
  -- waiting keeps its wait: the step it stopped at, shown by `stepq run` and named to resume from
  local sleeping = redis.call('HMGET', run, 'sleep_key', 'sleep_name')
  if sleeping[1] then
    redis.call('HSETNX', key_steps(run_id), sleeping[1] .. ':name', sleeping[2] or '')
  end
  redis.call('HDEL', run, 'timer', 'sleep_key', 'sleep_name', 'join_id', 'join_job', 'next_job')
  -- a singleton key (flow_starts.lua) is free once its run ends, unless a newer run holds it now
  local singleton = redis.call('HGET', run, 'singleton')
  if singleton and redis.call('GET', singleton) == run_id then
    redis.call('DEL', singleton)
  end
  for _, key in ipairs({run, key_events(run_id), key_memo(run_id), key_stack(run_id), key_steps(run_id),
      key_history(run_id)}) do
    redis.call('EXPIRE', key, retention_s)
  end
  index_done(run_id, now, retention_s)
end

-- Runs a script ended besides the one it was called for (a parent failed by its child's result):
-- scripts return them after their outcome, so that the worker emits those runs' ends too.
local ENDED = {}

local notify_parent -- defined below; fail_run and resolve_pending call each other through it

-- Messages a script wrote into its shard's outbox for other shards (runtime/outbox.py): scripts
-- return their ids after the runs they ended (see ends), marked with OUTBOX_MARK, so that the
-- caller delivers them at once (the outbox's sweeper delivers them if the caller dies first).
local SENT, OUTBOX_MARK = {}, '>'
-- How long a message waits for its sender's delivery before the sweeper delivers it (ms).
local OUTBOX_REDELIVER_MS = 5000

-- Write a message (a msgpack map, its kind under 'k') for shard ``to_tag`` into the outbox of the
-- shard ``from_tag``, atomically with the script's other writes. ``unique``: what makes its id
-- unique among the messages between these two shards (a redelivery carries the same id).
local function outbox_add(from_tag, id, body, now)
  redis.call('ZADD', key_outbox(from_tag), now + OUTBOX_REDELIVER_MS, id)
  redis.call('HSET', key_outbox_body(from_tag), id, body)
  SENT[#SENT + 1] = OUTBOX_MARK .. id
end

-- outbox_add, naming the message as runtime/outbox.py's message_id does: the two shards' numbers
-- (a tag starts with its shard's, two digits), then ``unique``.
local function outbox_put(from_tag, to_tag, unique, body, now)
  outbox_add(from_tag, string.sub(from_tag, 1, 2) .. string.sub(to_tag, 1, 2) .. ':' .. unique, body, now)
end

-- The runs a script ended besides its own (ENDED), then its outbox messages (SENT, marked).
local function ends()
  if #SENT == 0 then
    return ENDED
  end
  local out = {}
  for _, id in ipairs(ENDED) do
    out[#out + 1] = id
  end
  for _, id in ipairs(SENT) do
    out[#out + 1] = id
  end
  return out
end

-- Count one execution of a step's code (a step that ran, whether or not its result is committed),
-- apart from its retry attempts, so that duplicate executions show, in a run of ``status`` (nil: no
-- such run, nothing counted). An ended run's steps hash expires with the run; a live run's has no
-- expiry (the run's end gives it one).
local function counted(run_key, steps_key, key, status)
  if status then
    redis.call('HINCRBY', steps_key, key .. ':execs', 1)
    if TERMINAL[status] then
      local ttl = redis.call('TTL', run_key)
      if ttl > 0 then
        redis.call('EXPIRE', steps_key, ttl)
      end
    end
  end
end

-- counted, reading the run's status.
local function count_execution(run_key, steps_key, key)
  counted(run_key, steps_key, key, redis.call('HGET', run_key, 'status'))
end

-- msgpack of the error a run fails with when a write would take it past one of its limits.
local function limit_error(message)
  return cmsgpack.pack({name = 'LimitExceeded', message = message, stack = ''})
end

-- The step's name as users wrote it, for messages.
local function step_name(run_id, key, name)
  if name and name ~= '' then
    return name
  end
  return redis.call('HGET', key_steps(run_id), key .. ':name') or key
end

-- A step's value would take the run's state over its limit: the run fails (as Inngest fails it),
-- whichever path the value came by. Returns the refusal.
local function fail_for_state(run_id, key, name, size, limits, defaults, now)
  local message = string.format('run state would exceed %d bytes (STEPQ_MAX_STATE_BYTES) at step %s: %d bytes',
    limits.max_state, step_name(run_id, key, name), size)
  local run = key_run(run_id)
  local blob = limit_error(message)
  set_status(run_id, STATUS_FAILED)
  redis.call('HSET', run, 'error', blob, 'ended', now)
  close_run(run_id, now, limits.retention)
  ENDED[#ENDED + 1] = run_id
  notify_parent(run, 'error', blob, now, defaults)
  return 'state_too_large'
end

-- Memoize the value of a pending step (a planned step's result, a wait's event or timeout, an
-- invoked child's result, a sleep inside a fan-out). First writer wins; the last pending step to
-- resolve enqueues the run's next job (prepared when the steps were reported). A value that would
-- take the run's state over its limit fails the run instead. ``defaults``: the default limits (see
-- run_limits); ``executed`` ({attempts, ms}, or nil) says the value is what the step's code just
-- returned. (resolve_pending, below, also records it in the run's history.)
local function resolve_value(run_id, key, value, name, now, fence_field, fence, defaults, executed)
  local run = key_run(run_id)
  if executed then
    count_execution(run, key_steps(run_id), key)
  end
  local why = refuse(run, fence_field, fence)
  if why then
    return why
  end
  local pending = key_pending(run_id)
  if redis.call('SISMEMBER', pending, key) == 0 then
    return 'stale'
  end
  if redis.call('HEXISTS', key_memo(run_id), key) == 1 then
    return 'duplicate'
  end
  local limits = run_limits(run, defaults)
  local size = tonumber(redis.call('HGET', run, 'state_bytes') or '0') + string.len(value)
  if size > limits.max_state then
    return fail_for_state(run_id, key, name, size, limits, defaults, now)
  end
  redis.call('HSET', key_memo(run_id), key, value)
  redis.call('RPUSH', key_stack(run_id), key)
  redis.call('HSET', key_steps(run_id), key .. ':at', now)
  if name ~= '' then
    redis.call('HSET', key_steps(run_id), key .. ':name', name)
  end
  local steps = key_steps(run_id)
  if executed then
    redis.call('HSET', steps, key .. ':attempts', executed.attempts, key .. ':ms', executed.ms)
  else
    -- a sleep, a wait or an invoke: its duration is the time it was pending
    local planned = redis.call('HGET', steps, key .. ':planned')
    if planned then
      redis.call('HSET', steps, key .. ':ms', math.max(0, now - tonumber(planned)))
    end
  end
  redis.call('HDEL', steps, key .. ':planned')
  redis.call('HSET', run, 'state_bytes', size)
  redis.call('SREM', pending, key)
  local where = redis.call('HGET', run, 'wait:' .. key)
  if where then
    drop_wait(run, 'wait:' .. key, where)
  end
  if redis.call('SCARD', pending) == 0 then
    local join = redis.call('HMGET', run, 'join_id', 'join_job', 'q', 'prio')
    if join[1] then
      enqueue(key_job(join[1]), key_result(join[1]), key_queue(tag_of(run_id), join[3]), join[2],
        due_now(join[4], now), JOB_TTL_MS, now)
      redis.call('HSET', run, 'next_job', join[1])
      redis.call('HDEL', run, 'join_id', 'join_job')
    end
    set_status(run_id, STATUS_RUNNING)
    return 'joined'
  end
  return 'ok'
end

-- resolve_value, and the run's history records it with ``fields`` (a packed map, runtime/history.py;
-- nil: recorded by the caller).
local function resolve_pending(run_id, key, value, name, now, fence_field, fence, defaults, executed, fields)
  local outcome = resolve_value(run_id, key, value, name, now, fence_field, fence, defaults, executed)
  if fields then
    record_history(run_id, outcome, now, fields, outcome == 'done' or outcome == 'state_too_large')
  end
  return outcome
end

-- An invoked run's end resumes its parent: the parent's memo is {"data": output} or {"error": error},
-- written as a one-entry msgpack map around the already-packed value.
notify_parent = function(run_key, result_field, result_blob, now, defaults)
  local parent = redis.call('HGET', run_key, 'parent')
  if not parent then
    return
  end
  local parent_id, key = string.match(parent, '^(.-)|(.*)$')
  local wrapped
  local child_id = run_id_of(run_key)
  local fields = {k = 'child', key = key, child_run_id = child_id}
  if result_field == 'output' then
    wrapped = '\129\164data' .. result_blob
  else
    wrapped = '\129\165error' .. result_blob
    fields.error = error_fields(result_blob)
  end
  local from_tag, to_tag = tag_of(child_id), tag_of(parent_id)
  if from_tag ~= to_tag then
    -- the parent lives in another shard: its step is resolved there, by the message's delivery (a
    -- child ends once, so its id names the message; resolving twice is a duplicate, a no-op)
    outbox_put(from_tag, to_tag, 'resolve:' .. child_id, cmsgpack.pack({k = 'resolve', run = parent_id, key = key,
      value = wrapped, fields = cmsgpack.pack(fields)}), now)
    return
  end
  resolve_pending(parent_id, key, wrapped, '', now, '', '', defaults, nil, cmsgpack.pack(fields))
end


-- A script's reply: its outcome, then the runs it ended besides its own (see ENDED).
local function reply(outcome)
  return {outcome, unpack(ends())}
end

-- Claim a run for one invocation and return what the worker does not have cached: load_run.lua's
-- body, shared with claim_jobs.lua (which loads each job it claims, saving the worker a round
-- trip). Every key comes from ``run_id``. ``known``: how many memo entries (in stack order) the
-- worker has cached, -1 for none (the events are sent too); ``kind``, ``step_key``: the job's.
-- Returns {code, fence, fn, queue_id, events|false, stack_len, created, first_start, force_plan,
--          key1..keyN, value1..valueN}, or {'missing'}, {'done', status}, {'stale', stack_len}
-- (first_start is 1 when this invocation is the run's first)
local function load_run(run_id, position, known, fence_field, now, kind, step_key)
  local run, memo, stack = key_run(run_id), key_memo(run_id), key_stack(run_id)
  local status = redis.call('HGET', run, 'status')
  if not status then
    return {'missing'}
  end
  if TERMINAL[status] then
    return {'done', status}
  end
  local len = redis.call('LLEN', stack)
  if kind == 'wake' and len == position + 1 and redis.call('LINDEX', stack, -1) == step_key then
    -- this wake-up job woke the run already, and its worker died (or lost Redis) before the run
    -- moved on: the job runs again as the re-entry after the sleep
    position = len
  elseif kind == 'wake' then
    if len ~= position or redis.call('HEXISTS', memo, step_key) == 1 then
      return {'stale', len}
    end
    -- a finished sleep memoizes null (msgpack 0xc0)
    redis.call('HSET', memo, step_key, '\192')
    redis.call('RPUSH', stack, step_key)
    local name = redis.call('HGET', run, 'sleep_name') or ''
    redis.call('HSET', key_steps(run_id), step_key .. ':at', now, step_key .. ':name', name,
      step_key .. ':attempts', 1)
    local timer = redis.call('HGET', run, 'timer')
    if timer then
      redis.call('ZREM', key_timers(tag_of(run_id)), timer)
    end
    redis.call('HDEL', run, 'timer', 'sleep_key', 'sleep_name')
    record_history(run_id, 'ok', now, cmsgpack.pack({k = 'woke', key = step_key}), false)
    len = len + 1
  elseif kind == 'planned' then
    -- a planned (parallel) step: run only while it is pending and unresolved
    if redis.call('SISMEMBER', key_pending(run_id), step_key) == 0 or redis.call('HEXISTS', memo, step_key) == 1 then
      return {'stale', len}
    end
  elseif len ~= position then
    return {'stale', len}
  end
  local fence = redis.call('HINCRBY', run, fence_field, 1)
  if status == STATUS_QUEUED or status == STATUS_SLEEPING then
    set_status(run_id, STATUS_RUNNING)
  end
  local first = redis.call('HSETNX', run, 'started', now)
  local ids = redis.call('HMGET', run, 'fn', 'q', 'created', 'force_plan')
  local out = {'ok', fence, ids[1], ids[2]}
  if known < 0 then
    out[5] = redis.call('GET', key_events(run_id))
    known = 0
  else
    out[5] = false
  end
  out[6] = len
  out[7] = ids[3]
  out[8] = first
  out[9] = ids[4] or '0'
  if known < len then
    local new_keys = redis.call('LRANGE', stack, known, -1)
    local values = redis.call('HMGET', memo, unpack(new_keys))
    for i = 1, #new_keys do
      out[#out + 1] = new_keys[i]
    end
    for i = 1, #values do
      out[#out + 1] = values[i]
    end
  end
  return out
end
