"""Cron triggers: parse schedules, and start exactly one run per tick across a fleet of workers.

Every worker calls ``CronScheduler.fire_due`` (or the one-shot ``fire_due``) about once a second. For
each cron function it works out the latest tick at or before now and, when that tick is new, starts
one run whose event is ``inngest/scheduled.timer``. How one run per tick holds:

- The tick's claim is the run's dedupe key (``stepq:dedupe:<slug>:cron:<slug>:<tick_ms>``). A due
  tick is claimed by ``create_run`` itself, which checks the key, creates the run and sets the key in
  one script: however many workers race, one run, and no crash can leave a claim without its run. A
  tick that must not fire (first sight, or too old) is claimed with ``SET NX`` and the value
  ``skipped``, so a worker with a stale view cannot fire it later either.
- The run's id is the tick's own (``tick_run_id``: the same in every worker and every attempt), and
  the claim, the event's record and ``last`` are separate writes (on a Redis Cluster they live in
  different slots): a worker dying after the claim leaves the run created, and whoever claims the
  tick next finds that very run (create_run names it and writes nothing) and stores its event.
- ``stepq:cron:<slug>:last`` holds the newest tick handled (ms) and only moves forward. It makes the
  idle check cheap (a worker that has seen ``last`` reach the current tick asks Redis nothing) and it
  tells a function's first start (no ``last``) from a restart.

Semantics:
- Only the newest due tick fires: after an outage, the ticks missed before it are skipped (logged),
  never replayed as a burst, and the newest fires only while it is at most ``catch_up`` old.
- A function seen for the first time fires no tick from before it was seen, except one a couple of
  seconds old (``FIRST_SEEN_GRACE``), so a function deployed just before its tick still runs.
- Workers whose clocks differ a little agree anyway: ``last`` never moves back, and a tick is decided
  once, by its claim.

Expressions: five fields (minute hour day-of-month month day-of-week) or six with seconds first, as
Inngest (robfig/cron) reads them; ``@hourly``-style shorthands; an optional ``TZ=Area/City `` (or
``CRON_TZ=``) prefix, else UTC. Day-of-month and day-of-week combine as in Debian cron (OR when both
are restricted); a local time skipped by a DST change fires at the first valid time after it, and a
time repeated by one fires once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import hashlib
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from cronsim import CronSim, CronSimError

from stepq.errors import FunctionConfigError
from stepq.event import Event
from stepq.expressions import Bindings
from stepq.flow_spec import FlowControl
from stepq.ids import CROCKFORD
from stepq.triggers import TriggerCron

from . import flow_starts, keys, lifecycle
from .codec import pack, unpack
from .connection import RedisClient
from .ingest import Ingest
from .placement import new_run_id, shard_for
from .registry import FunctionRecord, Registry
from .shards import event_shard
from .store import RunStore

log = structlog.get_logger("stepq.cron")

#: The event name of a run started by a cron trigger (Inngest's).
CRON_EVENT = "inngest/scheduled.timer"
#: How old the newest tick may be and still fire after workers were down.
DEFAULT_CATCH_UP = dt.timedelta(minutes=10)
#: A function seen for the first time fires a tick this recent (workers check about once a second).
FIRST_SEEN_GRACE = dt.timedelta(seconds=2)
#: The value of a tick's claim when the tick was deliberately not fired.
SKIPPED = "skipped"

_SHORTHANDS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS = "[second] minute hour day-of-month month day-of-week"
_UTC = dt.UTC


class InvalidCronError(FunctionConfigError):
    """A cron expression that cannot be parsed; the message quotes it and says what is wrong."""


def tick_event_id(slug: str, tick_ms: int) -> str:
    """The id of the event of ``slug``'s tick at ``tick_ms``; also the run's dedupe key (the claim)."""
    return f"cron:{slug}:{tick_ms}"


def tick_event(slug: str, tick_ms: int, schedule: Schedule) -> Event:
    """The event of ``slug``'s tick at ``tick_ms`` (the same for every worker that sees the tick)."""
    return Event(CRON_EVENT, {"cron": schedule.text}, tick_event_id(slug, tick_ms), tick_ms)


def tick_run_id(slug: str, tick_ms: int, placed: str) -> str:
    """The id of the run of ``slug``'s tick at ``tick_ms``, in the shard of ``placed`` (a run id the
    placement chose for it: its last character): the same in every worker and every attempt (a ULID
    of the tick's time whose random bits are a digest of the tick), so that a claim repeated after a
    crash finds the run it created."""
    digest = int.from_bytes(hashlib.sha256(f"{slug}\x00{tick_ms}".encode()).digest()[:10], "big")
    value = (tick_ms << 80) | digest
    chars = []
    for _ in range(26):
        chars.append(CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))[:-1] + placed[-1]


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


@dataclasses.dataclass(eq=False, slots=True)
class Schedule:
    """A parsed cron expression: its text as written, the cron fields, and its time zone."""

    text: str
    expression: str
    tz: dt.tzinfo
    # The last answer of ``latest_ms``: the tick at or before now and the tick after it.
    _window: tuple[int, int] | None = dataclasses.field(default=None, repr=False)

    def latest(self, now: dt.datetime) -> dt.datetime | None:
        """The newest tick at or before ``now`` (aware), in UTC; None if there is none."""
        return self._window_at(_aware(now).astimezone(_UTC))[0]

    def next_after(self, now: dt.datetime) -> dt.datetime | None:
        """The first tick strictly after ``now`` (aware), in UTC; None if there is none."""
        bound = _aware(now).astimezone(_UTC)
        start = bound.replace(microsecond=0).astimezone(self.tz)
        for tick in CronSim(self.expression, start):
            if (tick := tick.astimezone(_UTC)) > bound:
                return tick
        return None

    def _window_at(self, now: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None]:
        """The newest tick at or before ``now`` (UTC) and the first one after it, in UTC.

        Ticks are handled in UTC: Python compares two datetimes of one zone by wall time, ignoring
        ``fold``, and never finds a time of the hour that DST's end repeats equal to one of another
        zone (PEP 495), so local datetimes mislead around DST changes.
        """
        # cronsim steps back from its start, excluding it unless it carries microseconds: start one
        # whole second after ``now`` so that a tick exactly at ``now`` counts.
        start = (now.replace(microsecond=0) + dt.timedelta(seconds=1)).astimezone(self.tz)
        latest = None
        for tick in CronSim(self.expression, start, reverse=True):
            if (tick := tick.astimezone(_UTC)) <= now:  # a guard: never a tick after now, whatever DST does
                latest = tick
                break
        if latest is None:
            return None, self.next_after(now)
        # Stepping back through a repeated hour (DST ending) can pass over the tick that forward
        # iteration, which decides when ticks happen, puts there: step forward to it.
        following = self.next_after(latest)
        while following is not None and following <= now:
            latest, following = following, self.next_after(following)
        return latest, following

    def latest_ms(self, now_ms: int) -> int | None:
        """``latest`` in milliseconds, memoized until the next tick: cheap to ask every second."""
        window = self._window
        if window is not None and window[0] <= now_ms < window[1]:
            return window[0]
        latest, following = self._window_at(dt.datetime.fromtimestamp(now_ms / 1000, _UTC))
        if latest is None:
            return None
        latest_ms = _ms(latest)
        self._window = (latest_ms, _ms(following) if following is not None else 2**63)
        return latest_ms


def _aware(when: dt.datetime) -> dt.datetime:
    if when.tzinfo is None:
        raise ValueError(f"cron: expected a timezone-aware datetime, got naive {when.isoformat()}")
    return when


@functools.lru_cache(maxsize=1024)
def parse_schedule(text: str) -> Schedule:
    """Parse ``"*/5 * * * *"``, ``"*/10 * * * * *"`` (seconds first), ``"TZ=Europe/Paris 0 9 * * 1-5"``
    or ``"@daily"``; raise ``InvalidCronError`` naming the expression and the problem.

    Results are cached: parsing the same text again is free (and shares the tick memo).
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidCronError(f"cron {text!r}: expected a cron expression such as '*/5 * * * *'")
    parts = text.split()
    tz: dt.tzinfo = _UTC
    head = parts[0]
    if head.upper().startswith(("TZ=", "CRON_TZ=")):
        name = head.split("=", 1)[1]
        if not name:
            raise InvalidCronError(f"cron {text!r}: TZ= needs a time zone name, such as TZ=Europe/Paris")
        try:
            tz = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidCronError(
                f"cron {text!r}: unknown time zone {name!r} (use an IANA name such as Europe/Paris)"
            ) from None
        parts = parts[1:]
        if not parts:
            raise InvalidCronError(f"cron {text!r}: the time zone is not followed by a schedule")
    if len(parts) == 1 and parts[0].startswith("@"):
        shorthand = _SHORTHANDS.get(parts[0].lower())
        if shorthand is None:
            raise InvalidCronError(
                f"cron {text!r}: unknown shorthand {parts[0]!r} (known: {', '.join(sorted(_SHORTHANDS))})"
            )
        parts = shorthand.split()
    if len(parts) not in (5, 6):
        raise InvalidCronError(
            f"cron {text!r}: expected 5 fields (minute hour day-of-month month day-of-week) or 6 with "
            f"seconds first, got {len(parts)}"
        )
    # Quartz and robfig/cron accept '?' for "no specific value" in the day fields; cron's '*' means it.
    parts[-3] = "*" if parts[-3] == "?" else parts[-3]
    parts[-1] = "*" if parts[-1] == "?" else parts[-1]
    expression = " ".join(parts)
    try:
        CronSim(expression, dt.datetime(2000, 1, 1, tzinfo=tz))
    except CronSimError as exc:
        # cronsim says which field ("Bad day-of-month"); point at its text too.
        detail = str(exc) or "invalid expression"
        field = _bad_field(detail, parts)
        where = f" {field!r}" if field is not None else ""
        raise InvalidCronError(f"cron {text!r}: {detail.lower()}{where} (fields: {_FIELDS})") from None
    return Schedule(text=text, expression=expression, tz=tz)


def _bad_field(detail: str, parts: list[str]) -> str | None:
    names = ["second", "minute", "hour", "day-of-month", "month", "day-of-week"]
    full = parts if len(parts) == 6 else ["0", *parts]
    for name, value in zip(names, full, strict=True):
        if detail.lower().endswith(name):
            return value
    return None


def cron_functions(functions: Iterable[Any]) -> list[tuple[str, str, str]]:
    """``(slug, app_id, cron_text)`` for every cron trigger of ``functions`` (``stepq.Function``s),
    validated: an invalid one raises ``InvalidCronError`` naming the function."""
    out = []
    for fn in functions:
        for trigger in fn.triggers:
            if isinstance(trigger, TriggerCron):
                try:
                    parse_schedule(trigger.cron)
                except InvalidCronError as exc:
                    raise InvalidCronError(f"function {fn.id!r}: {exc}") from None
                out.append((fn.slug, fn.app_id, trigger.cron))
    return out


# Move ``last`` forward to ARGV[1] unless it is already there or beyond.
_ADVANCE = """
local current = tonumber(redis.call('GET', KEYS[1]))
if current == nil or tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


@dataclasses.dataclass(slots=True)
class _CronFunction:
    slug: str
    app_id: str
    schedules: list[Schedule]
    #: The queue its runs go to: the app's own, or ``@http`` for functions served over HTTP.
    queue_id: str = ""

    def latest(self, now_ms: int) -> tuple[int, Schedule] | None:
        """The newest tick of any of the function's schedules at or before ``now_ms``."""
        best: tuple[int, Schedule] | None = None
        for schedule in self.schedules:
            tick = schedule.latest_ms(now_ms)
            if tick is not None and (best is None or tick > best[0]):
                best = (tick, schedule)
        return best


class CronScheduler:
    """Fires the due ticks of a set of cron functions; one per worker process, called every second.

    ``functions`` are ``(slug, app_id, cron_text)``, or ``(slug, app_id, cron_text, queue_id)`` for
    functions whose runs do not go to their app's queue; a function with several cron triggers fires on
    the union of their ticks (a tick shared by two fires once). When no tick is new since the last
    call, ``fire_due`` does not touch Redis; when one is, it reads ``last`` (one round trip) and, if
    the tick is due, claims it and records it (two pipelines), once per tick per process.
    """

    def __init__(
        self,
        store: RunStore,
        functions: Sequence[tuple[str, ...]],
        *,
        catch_up: dt.timedelta = DEFAULT_CATCH_UP,
        first_seen_grace: dt.timedelta = FIRST_SEEN_GRACE,
        redis: RedisClient | None = None,
    ) -> None:
        if catch_up < dt.timedelta(0):
            raise ValueError(f"cron catch-up must not be negative, got {catch_up}")
        self.store = store
        self.redis = redis if redis is not None else store.redis
        self.catch_up = catch_up
        self.catch_up_ms = int(catch_up.total_seconds() * 1000)
        self.first_seen_grace_ms = int(first_seen_grace.total_seconds() * 1000)
        grouped: dict[str, _CronFunction] = {}
        for slug, app_id, text, *queue in functions:
            entry = grouped.setdefault(slug, _CronFunction(slug, app_id, [], queue[0] if queue else app_id))
            schedule = parse_schedule(text)
            if schedule not in entry.schedules:
                entry.schedules.append(schedule)
        self.functions = list(grouped.values())
        # The newest ``last`` this process has read or written, per slug: ``last`` only grows, so a
        # tick at or before it is known to be handled without asking Redis.
        self._known: dict[str, int] = {}
        self._announcer: Ingest | None = None

    async def _advance(self, pipe: Any, slug: str, tick: int) -> None:
        """Queue on ``pipe`` the move of ``slug``'s ``last`` to ``tick`` (never backwards). As EVAL of
        the few bytes of its source, not EVALSHA, which a cluster's pipeline refuses."""
        pipe.eval(_ADVANCE, 1, keys.cron_last(slug), tick)

    async def fire_due(self, now: dt.datetime | None = None) -> list[str]:
        """Start the run of every function whose newest tick is due; return the ids of runs created."""
        now_ms = _ms(_aware(now)) if now is not None else _ms(dt.datetime.now(_UTC))
        candidates: list[tuple[_CronFunction, int, Schedule]] = []
        for fn in self.functions:
            found = fn.latest(now_ms)
            if found is not None and found[0] > self._known.get(fn.slug, -1):
                candidates.append((fn, *found))
        if not candidates:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for fn, _, _ in candidates:
                pipe.get(keys.cron_last(fn.slug))  # one key a command: on a cluster they live apart
            raw_lasts: list[bytes | None] = await pipe.execute()
        fire: list[tuple[_CronFunction, int, Schedule]] = []
        skip: list[tuple[_CronFunction, int, Schedule, str]] = []
        for (fn, tick, schedule), raw in zip(candidates, raw_lasts, strict=True):
            last = int(raw) if raw is not None else None
            if last is not None:
                self._remember(fn.slug, last)
                if tick <= last:
                    continue
            age = now_ms - tick
            if last is None and age > self.first_seen_grace_ms:
                skip.append((fn, tick, schedule, "first_seen"))
            elif age > self.catch_up_ms:
                skip.append((fn, tick, schedule, "beyond_catch_up"))
            else:
                fire.append((fn, tick, schedule))
        if not fire and not skip:
            return []
        return await self._claim(now_ms, fire, skip)

    async def _claim(
        self,
        now_ms: int,
        fire: list[tuple[_CronFunction, int, Schedule]],
        skip: list[tuple[_CronFunction, int, Schedule, str]],
    ) -> list[str]:
        limits = self.store.limits
        events = {fn.slug: tick_event(fn.slug, tick, schedule) for fn, tick, schedule in fire}
        # 1. Claim each tick: create its run (the dedupe key inside create_run is the claim), or
        #    mark it skipped. Whoever claims a tick first decides it, once.
        skip_ttl = max(limits.dedupe_s, self.catch_up_ms // 1000 + 60)
        # a tick's run is placed by its function's flow control (runtime/placement.py); a skipped
        # tick's mark goes where its run would have gone, so that the two meet
        flows = await self._flows([fn.slug for fn, _, _ in fire] + [fn.slug for fn, _, _, _ in skip])
        described: dict[str, tuple[str, dict[str, Any]]] = {}
        tick_runs: dict[str, str] = {}  # slug -> the id of its tick's run
        # The claims are scripts: called side by side, not pipelined (a cluster's pipeline refuses
        # EVALSHA, its keys being anywhere); the skips' marks are plain writes, pipelined.
        claims: list[Awaitable[Any]] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for fn, tick, _ in fire:
                event_dict = events[fn.slug].to_dict()
                bindings = Bindings(event=event_dict)
                placed = new_run_id(fn.slug, flows.get(fn.slug), bindings, tick_event_id(fn.slug, tick), now_ms)
                run_id = tick_run_id(fn.slug, tick, placed)  # placement's shard, the tick's own id
                tick_runs[fn.slug] = run_id
                # a cron run is one of the function's runs: its start limits apply (as in Inngest)
                checks = flow_starts.NONE
                if fn.slug in flows and flow_starts.governs_starts(flows[fn.slug]):
                    checks = flow_starts.start_checks(flows[fn.slug], fn.slug, run_id, bindings, self.store.limits)
                    described[run_id] = (fn.slug, event_dict)
                claims.append(
                    self.store.create_run(
                        run_id=run_id,
                        fn_slug=fn.slug,
                        app_id=fn.app_id,
                        queue_id=fn.queue_id,
                        events=[events[fn.slug]],
                        dedupe_key=tick_event_id(fn.slug, tick),
                        flow=flows.get(fn.slug),
                        checks=checks,
                    )
                )
            for fn, tick, schedule, _ in skip:
                tick_id = tick_event_id(fn.slug, tick)
                bindings = Bindings(event=tick_event(fn.slug, tick, schedule).to_dict())
                shard = shard_for(fn.slug, flows.get(fn.slug), bindings, tick_id)
                pipe.set(keys.dedupe(shard, fn.slug, tick_id), SKIPPED, nx=True, ex=skip_ttl)
            replies = [
                *await asyncio.gather(*claims, return_exceptions=True),
                *await pipe.execute(raise_on_error=False),
            ]
        created: list[str] = []
        handled: list[tuple[str, int]] = []
        announced: list[flow_starts.StartOutcomes] = []
        # 2. Store the events of the runs this worker created, and move ``last`` forward.
        retention = limits.retention_s
        async with self.redis.pipeline(transaction=False) as pipe:
            for (fn, tick, schedule), reply in zip(fire, replies[: len(fire)], strict=True):
                if isinstance(reply, Exception):
                    log.warning("cron.claim_failed", function=fn.slug, tick_ms=tick, error=str(reply))
                    continue
                handled.append((fn.slug, tick))
                outcomes = flow_starts.StartOutcomes.of_create_run(reply)
                if outcomes:
                    announced.append(outcomes)
                run_id = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
                # created now, or by an earlier claim of this tick that died before this second
                # write (the run's id is the tick's own): the event is stored either way, once
                if int(reply[0]) == 1 or run_id == tick_runs[fn.slug]:
                    if int(reply[0]) == 1:
                        created.append(run_id)
                    event = events[fn.slug]
                    shard = event_shard(event.id)
                    pipe.set(keys.event(event.id), pack(event.to_dict()), ex=retention)
                    pipe.zadd(keys.events_index(shard), {event.id: tick})
                    # what the dashboard's events page shows (runtime/event_queries.py): its run
                    pipe.set(keys.event_outcomes(event.id), pack([[fn.slug, "started", run_id, ""]]), ex=retention)
                    pipe.zadd(keys.events_named(shard, event.name), {event.id: tick})
                    pipe.zremrangebyscore(keys.events_named(shard, event.name), "-inf", now_ms - retention * 1000)
                    pipe.expire(keys.events_named(shard, event.name), retention)
                    log.info("cron.fired", function=fn.slug, cron=schedule.text, tick_ms=tick, run_id=run_id)
            for (fn, tick, _, reason), reply in zip(skip, replies[len(fire) :], strict=True):
                if isinstance(reply, Exception):
                    log.warning("cron.claim_failed", function=fn.slug, tick_ms=tick, error=str(reply))
                    continue
                handled.append((fn.slug, tick))
                if reply:  # this worker decided the skip: say so once
                    log.info("cron.skipped", function=fn.slug, tick_ms=tick, reason=reason, age_ms=now_ms - tick)
            if created:
                for shard in {event_shard(events[fn.slug].id) for fn, _, _ in fire}:
                    pipe.zremrangebyscore(keys.events_index(shard), "-inf", now_ms - retention * 1000)
            for slug, tick in handled:
                await self._advance(pipe, slug, tick)
            await pipe.execute()
        for slug, tick in handled:
            self._remember(slug, tick)
        for outcomes in announced:
            await lifecycle.announce_starts(self._ingest(), outcomes, described)
        return created

    async def _flows(self, slugs: list[str]) -> dict[str, FlowControl]:
        """The flow control of the functions about to fire (read from the registry, which holds
        what their apps registered): only those that have some."""
        if not slugs:
            return {}
        raw: list[bytes | None] = await self.redis.hmget(keys.FUNCTIONS, slugs)  # type: ignore[misc]
        out = {}
        for slug, blob in zip(slugs, raw, strict=True):
            if blob is None:
                continue
            try:
                config = unpack(blob)
                record = FunctionRecord(slug, config["app_id"], config)
            except Exception as exc:  # a registration this version cannot read: fire without limits
                log.warning("cron.flow_unreadable", function=slug, error=str(exc))
                continue
            if record.flow:
                out[slug] = record.flow
        return out

    def _ingest(self) -> Ingest:
        """An ingest to announce flow control's doings (skipped starts, replaced runs) through."""
        if self._announcer is None:
            self._announcer = Ingest(self.redis, self.store, Registry(self.redis))
        return self._announcer

    def _remember(self, slug: str, last: int) -> None:
        if last > self._known.get(slug, -1):
            self._known[slug] = last


async def fire_due(
    redis: RedisClient,
    store: RunStore,
    functions: Sequence[tuple[str, str, str]],
    *,
    now: dt.datetime | None = None,
    catch_up: dt.timedelta = DEFAULT_CATCH_UP,
) -> list[str]:
    """One pass of ``CronScheduler.fire_due`` with no memory between calls (one round trip when
    nothing is due). A long-lived caller should keep a ``CronScheduler``, which skips even that."""
    return await CronScheduler(store, functions, catch_up=catch_up, redis=redis).fire_due(now)
