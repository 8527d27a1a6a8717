-- The run lists' indexes and live counts (runtime/queries.py reads them; keys in runtime/keys.py),
-- written in the same script as the change they follow, in the run's shard. Put in every script's
-- prelude before prelude.lua, whose helpers call them.
-- * runs_ev:<event name>: the runs started by events of a name, by creation time (index_new_run);
-- * runs_st:<status>, runs_fs:<slug>|<status>: the runs in each status now, by creation time (their
--   unions are all runs, and a function's), and run_counts: how many runs of each function are in
--   each status that is not an end (set_status);
-- * runs_ended:<slug>|<status>: the runs that ended within the last hour, by end time (index_ended);
-- * runs_expiry: each ended run, by when its record expires; an end drops from every index the
--   runs whose records expired since (index_ended): the indexes live as long as the records.

-- At most this many expired runs leave the indexes per end: an end adds one, so they keep up, and a
-- burst of runs that expired together leaves with the next few ends.
local INDEX_TRIM_MAX = 500
local RECENT_ENDS_MS = 3600 * 1000

-- A new run: listed among its event name's ('' for none). set_status lists it by status.
local function index_new_run(run_id, event_name, created)
  if event_name ~= '' then
    redis.call('ZADD', key_runs_ev(tag_of(run_id), event_name), created, run_id)
  end
end

-- Set a run's status. Every status change goes through here, so that the status indexes and the live
-- counts follow the records (a change that bypassed it would make the counts drift). The run's
-- record must hold 'fn' and 'created'.
local function set_status(run_id, status)
  local run = key_run(run_id)
  local got = redis.call('HMGET', run, 'status', 'fn', 'created')
  local old, slug, created = got[1], got[2] or '', got[3] or '0'
  if old == status then
    return
  end
  redis.call('HSET', run, 'status', status)
  local tag = tag_of(run_id)
  local counts = key_run_counts(tag)
  if old then
    if not TERMINAL[old] then
      local field = slug .. '|' .. old
      if redis.call('HINCRBY', counts, field, -1) <= 0 then
        redis.call('HDEL', counts, field) -- the hash holds the statuses in use only
      end
    end
    redis.call('ZREM', key_runs_st(tag, old), run_id)
    redis.call('ZREM', key_runs_fs(tag, slug .. '|' .. old), run_id)
  end
  if not TERMINAL[status] then
    redis.call('HINCRBY', counts, slug .. '|' .. status, 1)
  end
  redis.call('ZADD', key_runs_st(tag, status), created, run_id)
  redis.call('ZADD', key_runs_fs(tag, slug .. '|' .. status), created, run_id)
end

-- A run ended (set_status made its end status): counted among its function's recent ends, and
-- remembered until its record expires (``now`` + ``retention_s``); the runs whose records expired
-- by now leave every index.
local function index_ended(run_id, now, retention_s)
  local tag = tag_of(run_id)
  local got = redis.call('HMGET', key_run(run_id), 'fn', 'status', 'ev')
  local slug, status = got[1] or '', got[2] or ''
  -- "ended in the last hour" (or within the retention, when that is shorter)
  local window = math.min(RECENT_ENDS_MS, retention_s * 1000)
  local recent = key_runs_ended(tag, slug .. '|' .. status)
  redis.call('ZADD', recent, now, run_id)
  redis.call('ZREMRANGEBYSCORE', recent, '-inf', now - window)
  redis.call('PEXPIRE', recent, window)
  local expiry = key_runs_expiry(tag)
  redis.call('ZADD', expiry, now + retention_s * 1000, cmsgpack.pack({run_id, slug, status, got[3] or ''}))
  local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, INDEX_TRIM_MAX)
  for _, member in ipairs(gone) do
    local e = cmsgpack.unpack(member)
    local id, fn, st, ev = e[1], e[2], e[3], e[4]
    redis.call('ZREM', key_runs_st(tag, st), id)
    redis.call('ZREM', key_runs_fs(tag, fn .. '|' .. st), id)
    if ev ~= '' then
      redis.call('ZREM', key_runs_ev(tag, ev), id)
    end
  end
  if #gone > 0 then
    redis.call('ZREM', expiry, unpack(gone))
  end
end
