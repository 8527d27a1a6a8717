-- Apply one Plan (runtime/plan.py) atomically: the one write an invocation's outcome makes, and, when
-- that write is refused as stale or duplicate, the nudge that keeps the run moving (a job that
-- re-enters it where it stands, unless something else will move it on).
-- KEYS: run, memo, stack, steps, pending, jobs, timers, queue, then the keys of the write, in the
--       order runtime/plan_wire.py lists them: (job, result) per job it queues, a wait's 2 or 3 keys
--       (see register_wait_from in the prelude)
-- ARGV[1]: the plan, msgpack: {head, kind, body} (runtime/plan_wire.py)
--   head: {run_id, fence_field, fence, position, now_ms, grace_ms, max_state, retention, nudge_job_id,
--          nudge_prefix, nudge_suffix, job_id, lease_token, hand_off, lease_ms, history}: job_id to
--          lease_ms the caller's job, ended here ('' for none), and whether it may be handed the
--          run's next job; history: the fields of the write's entry in the run's history (a packed
--          msgpack map, runtime/history.py), appended whatever the outcome
-- Returns {outcome, nudged, {ended...}, job_ended} and, when it handed over the next job, that job's
-- id, try, fence and force_plan flag after them: nudged is '' when no nudge ran, else what nudge()
-- found; ended: the runs this script ended besides its own and its outbox messages (see ends in the prelude); job_ended: 1
-- when it ended the caller's job.
local plan = cmsgpack.unpack(ARGV[1])
local head, kind, body = plan[1], plan[2], plan[3]
local RUN, MEMO, STACK, STEPS, PENDING, JOBS, TIMERS, QUEUE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6], KEYS[7], KEYS[8]
local run_id, fence_field, fence, position = head[1], head[2], head[3], head[4]
local now, grace = head[5], head[6]
local defaults = limits_of(head[7], head[8])

-- Queue a job whose (job, result) keys are KEYS[k], KEYS[k + 1]; ttl: its delay plus the grace.
local function enqueue_at(k, payload, due)
  enqueue(KEYS[k], KEYS[k + 1], QUEUE, payload, due, math.max(0, due - now) + grace, now)
  return job_id_of(KEYS[k])
end

-- The run's next job, written by a commit; it may go straight to the caller (see the end).
local NEXT_JOB = nil

-- The run's state would grow by ``value``: its new size, or nil when that breaks its limit.
local function grown(value)
  local limits = run_limits(RUN, defaults)
  local size = tonumber(redis.call('HGET', RUN, 'state_bytes') or '0') + string.len(value)
  return size, limits, size <= limits.max_state
end

-- A step's result at the run's position: memoize it (first writer wins); its next job is queued
-- at the end (it may go straight to the caller). One read of the run's record serves every check.
local function commit(b)
  local key, name, value, attempts, ms = b[1], b[2], b[3], b[4], b[5]
  local run = redis.call('HMGET', RUN, 'status', fence_field, 'lim', 'state_bytes', 'force_plan', 'lane', 'prio')
  counted(RUN, STEPS, key, run[1])
  local why = refusal(run[1], run[2], fence)
  local cancelled = false
  if why == 'done' and run[1] == STATUS_CANCELLED then
    -- a step that was running when its run was cancelled: record its result, run nothing after it
    cancelled = true
  elseif why then
    return why
  end
  if redis.call('LLEN', STACK) ~= position then
    return 'stale'
  end
  if redis.call('HEXISTS', MEMO, key) == 1 then
    return 'duplicate'
  end
  local limits = limits_in(run[3], defaults)
  local size = tonumber(run[4] or '0') + string.len(value)
  if size > limits.max_state then
    if cancelled then
      return 'cancelled'
    end
    return fail_for_state(run_id, key, name, size, limits, defaults, now)
  end
  redis.call('HSET', MEMO, key, value)
  redis.call('RPUSH', STACK, key)
  redis.call('HSET', STEPS, key .. ':name', name, key .. ':attempts', attempts, key .. ':ms', ms, key .. ':at', now)
  if cancelled then
    redis.call('HSET', RUN, 'state_bytes', size)
    for _, k in ipairs({MEMO, STACK, STEPS}) do
      redis.call('EXPIRE', k, redis.call('TTL', RUN))
    end
    return 'cancelled'
  end
  -- the run's record learns its new size and next job at the end, with the hand-over's fence
  NEXT_JOB = {payload = b[6], force_plan = run[5] or '0', fence = tonumber(run[2]), state_bytes = size,
    limited = run[6] ~= false, due = due_now(run[7], now)}
  return 'ok'
end

-- A planned step's result (see resolve_pending in the prelude).
local function resolve(b)
  return resolve_pending(run_id, b[1], b[3], b[2], now, fence_field, fence, defaults, {attempts = b[4], ms = b[5]})
end

-- Checks shared by a retry and a sleep: the claim holds and the run (or planned step) is where the
-- invocation found it.
local function parked_refusal(planned, key)
  local why = refuse(RUN, fence_field, fence)
  if why then
    return why
  end
  if planned == 1 then
    if redis.call('SISMEMBER', PENDING, key) == 0 then
      return 'stale'
    end
  elseif redis.call('LLEN', STACK) ~= position then
    return 'stale'
  end
  return nil
end

-- A failed attempt: record it, queue the next attempt at its backoff.
local function retry(b)
  local key, name, attempts, error_message, executed, planned, payload, due = b[1], b[2], b[3], b[4], b[5], b[6],
    b[7], b[8]
  if executed == 1 then
    count_execution(RUN, STEPS, key)
  end
  local why = parked_refusal(planned, key)
  if why then
    return why
  end
  if key ~= '' then
    redis.call('HSET', STEPS, key .. ':attempts', attempts)
    if name ~= '' then
      redis.call('HSET', STEPS, key .. ':name', name)
    end
    if error_message ~= '' then
      redis.call('HSET', STEPS, key .. ':error', error_message)
    end
  else
    -- the function's own code failed outside any step: count the run's retries, keep the last error
    redis.call('HINCRBY', RUN, 'fn_retries', 1)
    redis.call('HSET', RUN, 'fn_error', error_message)
  end
  local job_id = enqueue_at(9, payload, due)
  if planned == 1 then
    redis.call('SADD', JOBS, job_id) -- one of several planned steps' retries
  else
    redis.call('HSET', RUN, 'next_job', job_id) -- the run's retry is its next job
  end
  return 'ok'
end

-- A sleep: park the run; its wake job is known by the timer (the run's 'timer' and 'sleep_key'
-- rebuild it), and the step's name waits in the run record, so a sleeping run needs no steps hash.
local function sleep(b)
  local key, name, payload, due, member = b[1], b[2], b[3], b[4], b[5]
  local why = parked_refusal(0, key)
  if why then
    return why
  end
  set_status(run_id, STATUS_SLEEPING)
  redis.call('HSET', RUN, 'timer', member, 'sleep_key', key, 'sleep_name', name)
  redis.call('ZADD', TIMERS, due, member)
  redis.call('HDEL', RUN, 'next_job')
  enqueue_at(9, payload, due)
  return 'ok'
end

-- Steps reported together (parallel steps, sleeps, waits, invokes): each pending with the job that
-- will resolve it, and the join job kept in the run record until the last one resolves.
local function fan_out(b)
  local join_id, join_payload, status, force_plan, steps = b[1], b[2], b[3], b[4], b[5]
  local why = refuse(RUN, fence_field, fence)
  if why then
    return why
  end
  if redis.call('LLEN', STACK) ~= position then
    return 'stale'
  end
  redis.call('DEL', PENDING)
  set_status(run_id, status)
  redis.call('HSET', RUN, 'join_id', join_id, 'join_job', join_payload)
  -- After steps ran in parallel, the next call asks the SDK to plan rather than run (Inngest's
  -- ForceStepPlan); one planned step at a time lifts it.
  if force_plan == 1 then
    redis.call('HSET', RUN, 'force_plan', '1')
  else
    redis.call('HDEL', RUN, 'force_plan')
  end
  local k = 9
  local priority = redis.call('HGET', RUN, 'prio')
  for _, step in ipairs(steps) do
    local key, name, payload, due, start_payload, wait = step[1], step[2], step[3], step[4], step[5], step[6]
    if priority and due <= now then
      due = due_now(priority, now) -- every step of the run inherits its priority
    end
    redis.call('SADD', PENDING, key)
    -- ':planned' gives a step that no code of ours runs (a sleep, a wait, an invoke) its duration
    redis.call('HSET', STEPS, key .. ':name', name, key .. ':planned', now)
    if payload ~= '' then
      redis.call('SADD', JOBS, enqueue_at(k, payload, due))
      k = k + 2
    end
    if start_payload ~= '' then
      redis.call('SADD', JOBS, enqueue_at(k, start_payload, now))
      k = k + 2
    end
    if wait ~= 0 then
      k = register_wait_from(RUN, KEYS, k, wait, 1)
    end
  end
  return 'ok'
end

-- End the run with its output or error, and hand an invoked run's result to its parent. A run
-- failed at once by a step's code (a NonRetriableError) records that step's failed attempt, as a
-- retry records one: the step it stopped at, listed with its error and resumable from.
local function finish(b)
  local status, field, blob, key = b[1], b[2], b[3], b[4]
  if key ~= '' then
    count_execution(RUN, STEPS, key)
  end
  local why = refuse(RUN, fence_field, fence)
  if why then
    return why
  end
  if key ~= '' then
    redis.call('HSET', STEPS, key .. ':name', b[5], key .. ':attempts', b[6], key .. ':ms', b[7], key .. ':at', now,
      key .. ':error', b[8])
  end
  set_status(run_id, status)
  redis.call('HSET', RUN, field, blob, 'ended', now)
  close_run(run_id, now, run_limits(RUN, defaults).retention)
  notify_parent(RUN, field, blob, now, defaults)
  return 'ok'
end

-- After a refused write, make sure the run still has something that will move it on: a job queued
-- or running, pending steps (their jobs, waits and timers resolve them), or a sleep's timer. A run
-- with none of these would stay parked forever: queue a job that re-enters it where it stands.
-- Returns 'done', 'pending', 'sleeping', 'queued' or 'nudged'.
local function nudge(caller, prefix, suffix)
  local status = redis.call('HGET', RUN, 'status')
  if not status or TERMINAL[status] then
    return 'done'
  end
  if redis.call('SCARD', PENDING) > 0 then
    return 'pending'
  end
  if redis.call('HEXISTS', RUN, 'timer') == 1 then
    return 'sleeping'
  end
  local next_job = redis.call('HGET', RUN, 'next_job')
  if next_job and next_job ~= caller and redis.call('EXISTS', key_job(next_job)) == 1 then
    return 'queued'
  end
  -- The position is known only here, so the job's keys are built here (as a join's are).
  local at = redis.call('LLEN', STACK)
  local job_id = step_job_id(run_id, at)
  enqueue(key_job(job_id), key_result(job_id), QUEUE, prefix .. cmsgpack.pack(at) .. suffix, now, grace, now)
  redis.call('HSET', RUN, 'next_job', job_id)
  return 'nudged'
end

local WRITES = {commit = commit, resolve = resolve, retry = retry, sleep = sleep, fan_out = fan_out, finish = finish}
local outcome = WRITES[kind](body)
-- a refused write is recorded too: a step's result refused is a duplicate execution of the step
record_history(run_id, outcome, now, head[16], outcome == 'done' or outcome == 'cancelled'
  or outcome == 'state_too_large' or (kind == 'finish' and outcome == 'ok'))
local nudged = ''
if (outcome == 'stale' or outcome == 'duplicate') and head[9] ~= '' then
  nudged = nudge(head[9], head[10], head[11])
end

-- The job that made this write is done with it (unless fenced off: then it runs once more, to check
-- that the other delivery did its work): end it here, while its lock holds the caller's token, and
-- save the worker the round trip. The run's next job, due now, may go straight to the same worker
-- under a fresh lease: one round trip from a step's result to the next step's start, with no poll,
-- claim or load. It stays queued, so a crash of that worker hands it to another.
local job_id, token, hand_off, lease_ms = head[12], head[13], head[14], head[15]
local job_ended = 0
if job_id ~= '' and outcome ~= 'fenced' and end_job(QUEUE, job_id, token) then
  job_ended = 1
end
local goes_on = NEXT_JOB and outcome == 'ok'
-- The ended job's concurrency slots: a run that goes on at once hands them to its next job (a run in
-- progress goes ahead of runs waiting to start); otherwise they go to whoever waits (slots.lua).
local slotted = true
if job_ended == 1 then
  if goes_on and NEXT_JOB.limited then
    slotted = SLOTS.hand_over(job_id, job_id_of(KEYS[9]), run_id, now, now + lease_ms)
  elseif not goes_on then
    SLOTS.release(job_id, now)
  end
end
if goes_on then
  local next_id = job_id_of(KEYS[9])
  if job_ended == 1 and hand_off == 1 and fence_field == 'fence' and NEXT_JOB.fence and slotted then
    if take_new_job(KEYS[9], KEYS[10], QUEUE, NEXT_JOB.payload, grace, token, lease_ms, now) then
      -- the next invocation's claim, as its load would have taken it (a commit's fence is 'fence')
      local next_fence = NEXT_JOB.fence + 1
      redis.call('HSET', RUN, 'state_bytes', NEXT_JOB.state_bytes, 'next_job', next_id, 'fence', next_fence)
      return {outcome, nudged, ends(), job_ended, next_id, 1, next_fence, NEXT_JOB.force_plan}
    end
  else
    enqueue(KEYS[9], KEYS[10], QUEUE, NEXT_JOB.payload, NEXT_JOB.due, math.max(0, NEXT_JOB.due - now) + grace, now)
  end
  redis.call('HSET', RUN, 'state_bytes', NEXT_JOB.state_bytes, 'next_job', next_id)
end
return {outcome, nudged, ends(), job_ended}
