"""Operator actions on runs (issue 12): cancel, replay, resume from a step, the same by filter, and
a test event. The CLI (``stepq cancel``, ``stepq replay``), the HTTP API (``POST /v0/runs/...``)
and the dashboard all call ``Actions``.

- **Cancel** (``Actions.cancel``): as ``stepq cancel`` always did (``lifecycle.cancel``): the run
  takes no further step, its jobs, timers and waits go, and its end is announced.
- **Replay** (``Actions.replay``): a new run of the same function, from the start, with the same
  event(s) (a batched run's whole batch). Allowed for runs that *ended*: failed, cancelled and also
  completed (re-running a completed run is how an operator redoes its work after fixing a bug in
  what it did; the new run is separate, the old one stays as it was). Refused (``RunConflict``)
  for a run that still runs (cancel it first: two runs of one event side by side is what the
  operator would not expect), for a ``skipped`` run (flow control never started it: it has no
  stored events; send the event again), and when its function is no longer registered.
- **Resume from a step** (``Actions.resume``), as DBOS's fork: a new run that keeps the steps the
  old run committed *before* the chosen step (the run's ``stack`` gives the commit order) with
  their memoized values byte for byte (values the encryption middleware encrypted stay encrypted:
  only the app's processes can read them), their bookkeeping (attempts, durations, names) and the
  state size they make; its first job enters at that position, so the chosen step and everything
  after it run again. The step is one the run committed, or one it tried and did not commit (the
  step a failed run failed at, a step of a group still pending when it was cancelled): then every
  committed step is kept and the new run re-enters where the old one stopped. Any other step is
  refused (``BadRequest``). Sleeps and waits before it are memoized, so they are not slept or waited
  again; a sleep or wait chosen as the step sleeps (its whole duration, from now) or waits again.
  Parallel groups: a group's steps are committed one by one, in the order they finished, so
  keeping the stack prefix may keep some of a group and not others; the function re-enters, finds
  the kept ones memoized and plans the missing ones again (the SDK plans every unmemoized step of
  a group), which is deterministic whatever subset was kept. The function must still ask for the
  kept steps in the same order, as on any re-entry: code changed since then gets the usual
  divergence error naming the step.
- Links: the new run's record says ``replay_of`` (a replay) or ``forked_from`` and ``from_step``
  (a resume); the old run's ``replays`` lists the newest ``MAX_LINKS`` runs made from it
  (``RunLinks``). The new run gets a new id in the old run's shard (one Lua script,
  runtime/lua/fork_run.lua, reads the old run and creates the new one: both in one slot), and its
  record keeps the old run's event ids (no event-id dedupe applies).
- **Flow control of a replay or resume**: it is an operator's explicit request, so the limits
  that decide *whether* a run starts do not apply: no idempotency, rate limit, throttle or
  singleton check (an idempotency key would always refuse it: the old run holds it), and no
  debounce or batching (the new run has exactly the old run's events, it gathers nothing). The
  limits that decide *how* runs run apply as to any run: concurrency limits (the keys evaluated
  from its first event) and priority, the function's cancellation rules (``cancel``), timeouts
  and its state and retention limits.
- **Bulk** (``bulk_cancel``, ``bulk_replay``): the runs a ``RunFilter`` selects
  (runtime/queries.py: function, status, time range, event name), at most ``BULK_CAP`` per request
  (``capped`` says more matched: run it again, or narrow the filter), worked through in chunks of
  ``BULK_CHUNK`` with at most ``BULK_CONCURRENCY`` actions in flight. ``preview`` counts what a
  request would touch without doing it. Runs that cannot take the action (already ended for a
  cancel; still running, skipped, expired or of an unregistered function for a replay) are
  counted as skipped, with their ids.
- **Test event** (``send_test_event``): sends one event as ``stepq send`` does and answers its id
  and the runs it started (found through the event's idempotency key, which ``send_test_event``
  sets; a debounced or batched function's run is not listed: it gathers events, keyed otherwise).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from stepq.event import Event
from stepq.expressions import Bindings
from stepq.ids import new_ulid

from . import keys, lifecycle
from .bounded import gather_bounded
from .codec import unpack
from .connection import RedisClient
from .ingest import Ingest, triggered
from .limits import Limits
from .placement import placed, shard_for
from .queries import RunFilter, count_runs, run_ids
from .registry import FunctionRecord, Registry
from .run_status import RunStatus
from .script_args import ForkRunArgs
from .scripts import source
from .shards import new_run_id, shard_of
from .store import Outcome, RunStore, now_ms
from .waits import cancel_registrations

#: The statuses a run may be replayed or resumed from.
REPLAYABLE = (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.COMPLETED)
#: Runs made from one run that its record lists (``replays``), newest last.
MAX_LINKS = 100
#: Runs one bulk request acts on at most.
BULK_CAP = 10_000
#: A bulk request's runs are handled this many at a time...
BULK_CHUNK = 200
#: ... with at most this many actions in flight.
BULK_CONCURRENCY = 16
DEFAULT_REASON = "cancelled by an operator"


class ActionRefused(ValueError):
    """An action that cannot be done; ``status`` is the HTTP status the API answers it with."""

    status: ClassVar[int] = 400


class BadRequest(ActionRefused):
    """An argument is wrong (the message names it): an unknown step, a bad filter field."""


class RunNotFound(ActionRefused):
    """No such run (unknown, or expired after the retention period)."""

    status = 404


class RunConflict(ActionRefused):
    """The run cannot take the action now: it still runs, it never started, or its function is
    no longer registered."""

    status = 409


@dataclasses.dataclass(frozen=True, slots=True)
class Started:
    """A run started by a replay or a resume."""

    run_id: str
    #: The run it was made from.
    source_run_id: str
    #: ``replay`` or ``resume``.
    kind: str
    #: A resume's step (its key and name) and how many committed steps the new run kept.
    from_step: str | None = None
    from_step_name: str | None = None
    kept_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class Cancelled:
    """What a cancel did: ``outcome`` is ``cancelled``, ``done`` (it had ended) or ``missing``."""

    run_id: str
    outcome: str

    @property
    def cancelled(self) -> bool:
        return self.outcome == "cancelled"

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "outcome": self.outcome, "cancelled": self.cancelled}


@dataclasses.dataclass(frozen=True, slots=True)
class RunLinks:
    """How a run relates to replays: the run it replays or was forked from, and its own replays."""

    replay_of: str | None = None
    forked_from: str | None = None
    from_step: str | None = None
    #: Runs replayed or resumed from this one, newest last (at most ``MAX_LINKS``).
    replays: tuple[str, ...] = ()

    @classmethod
    def of_record(cls, raw: dict[bytes, bytes]) -> RunLinks:
        """The links in a run's record (its HGETALL)."""

        def text(field: bytes) -> str | None:
            value = raw.get(field)
            return value.decode() if value else None

        listed = text(b"replays")
        return cls(
            replay_of=text(b"replay_of"),
            forked_from=text(b"forked_from"),
            from_step=text(b"from_step"),
            replays=tuple(listed.split(",")) if listed else (),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "replays": list(self.replays)}


@dataclasses.dataclass(frozen=True, slots=True)
class Preview:
    """How many runs a bulk request would touch (``capped``: more matched than ``cap``)."""

    count: int
    capped: bool
    cap: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(slots=True)
class BulkResult:
    """What a bulk request did. ``done``: runs cancelled, or replayed (``new_run_ids`` then holds
    the new runs, in the order of ``done_run_ids``); ``skipped``: runs that could not take the
    action (already ended, not replayable), by id with why."""

    action: str
    matched: int
    capped: bool
    dry_run: bool
    done_run_ids: list[str] = dataclasses.field(default_factory=list)
    new_run_ids: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def done(self) -> int:
        return len(self.done_run_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "matched": self.matched,
            "capped": self.capped,
            "dry_run": self.dry_run,
            "done": self.done,
            "skipped_count": len(self.skipped),
            "done_run_ids": self.done_run_ids,
            "new_run_ids": self.new_run_ids,
            "skipped": self.skipped,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class SentEvent:
    """A test event: its stored id and the runs it started (run id -> function slug)."""

    event_id: str
    runs: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "runs": self.runs}


class Actions:
    """The operator actions, on one Redis (through an ``Ingest``: a cancel announces the run's end,
    a test event is ingested like any other)."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.redis: RedisClient = ingest.redis
        self.store: RunStore = ingest.store
        self.registry: Registry = ingest.registry

    @classmethod
    def on(cls, redis: RedisClient, limits: Limits | None = None) -> Actions:
        """Actions on ``redis`` (limits: the defaults of runs, ``Limits.from_env()`` if not given)."""
        store = RunStore(redis, limits or Limits.from_env())
        return cls(Ingest(redis, store, Registry(redis, store.scripts)))

    # -- one run -----------------------------------------------------------------------------------

    async def cancel(self, run_id: str, reason: str = DEFAULT_REASON) -> Cancelled:
        """Cancel a run; ``Cancelled.outcome`` says whether it was (``done``: it had ended already,
        ``missing``: no such run). Never raises for a run that cannot be cancelled."""
        outcome = await lifecycle.cancel(self.ingest, run_id, reason)
        return Cancelled(run_id, "cancelled" if outcome is Outcome.OK else outcome.value)

    async def replay(self, run_id: str) -> Started:
        """Start a new run of ``run_id``'s function from the start with its event(s).

        Raises ``RunNotFound``, or ``RunConflict`` when the run still runs, was skipped, or its
        function is no longer registered (see the module's docstring)."""
        return await self._fork(run_id, None)

    async def resume(self, run_id: str, step: str) -> Started:
        """Start a new run of ``run_id``'s function that keeps the steps committed before ``step``
        (a step key, or a step's name when exactly one step has it) and runs from it.

        Raises ``RunNotFound``; ``BadRequest`` when ``step`` is neither a committed step of the run
        nor the step it stopped at (or names several); ``RunConflict`` as ``replay``."""
        if not step:
            raise BadRequest("step: give the key or the name of a step the run committed")
        return await self._fork(run_id, step)

    async def links(self, run_id: str) -> RunLinks | None:
        """The run's replay links (None: no such run)."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.run(run_id))  # type: ignore[misc]
        return RunLinks.of_record(raw) if raw else None

    async def _fork(self, run_id: str, step: str | None) -> Started:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.run(run_id))
            pipe.get(keys.events(run_id))
            pipe.lrange(keys.stack(run_id), 0, -1)
            raw, blob, stack = await pipe.execute()
        if not raw:
            raise RunNotFound(f"no run {run_id!r} (unknown, or expired after the retention period)")
        status = raw.get(b"status", b"").decode()
        _check_status(run_id, status)
        slug = raw.get(b"fn", b"").decode()
        fn = await self.registry.get(slug)
        if fn is None:
            raise RunConflict(f"run {run_id}: function {slug!r} is no longer registered; it cannot run again")
        if blob is None:
            raise RunConflict(f"run {run_id} has no stored events (it never started): send its event again")
        keep, key, name = 0, None, None
        if step is not None:
            order = [k.decode() for k in stack]
            keep, key, name = await self._position(run_id, order, step)
        events = [Event(**e) for e in unpack(blob)]
        # fork_run.lua copies the old run's state into the new one: one script, so one shard. The
        # old run's shard is where the function's flow control places the new one too, unless that
        # flow control (or the shard count) changed since; the new run's concurrency would then be
        # counted apart from its function's other runs
        new_id = new_run_id(now_ms(), shard_of(run_id))
        if not placed(new_id, fn.slug, fn.flow, Bindings(event=events[0].to_dict() if events else {})):
            raise RunConflict(
                f"run {run_id} cannot run again in place: its function's flow control (or the shard count) "
                "changed since it ran and now places its runs in another shard (see runtime/placement.py); "
                "send its event again"
            )
        reply = await self._call_fork(run_id, new_id, fn, raw, events, keep, key)
        code = reply[0].decode()
        if code == "ok":
            kind = "resume" if step is not None else "replay"
            return Started(new_id, run_id, kind, key, name, keep)
        if code == "missing":
            raise RunNotFound(f"no run {run_id!r} (it expired meanwhile)")
        if code == "status":
            _check_status(run_id, reply[1].decode())
        what = f"resumed from step {step!r}" if step is not None else "replayed"
        detail = " ".join(item.decode() if isinstance(item, bytes) else str(item) for item in reply[1:])
        # 'moved': the step's position changed since it was read; 'broken': a kept step lost its value
        raise RunConflict(f"run {run_id} cannot be {what} now ({code} {detail}".rstrip() + ")")

    async def _position(self, run_id: str, order: list[str], step: str) -> tuple[int, str, str]:
        """Where the new run starts for ``step`` (a key, or a name): (steps kept, key, name).

        A committed step keeps the steps committed before it. A step the run tried and did not
        commit (the step it failed at, or one of a group still pending when it ended) keeps every
        committed step: the new run re-enters where the old one stopped."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.steps(run_id))  # type: ignore[misc]
        names: dict[str, str] = {}
        tried: set[str] = set()
        for field, value in raw.items():
            key, _, what = field.decode().partition(":")
            tried.add(key)
            if what == "name":
                names[key] = value.decode()
        committed = set(order)
        candidates = order + sorted(tried - committed)
        if step in candidates:
            key = step
        else:
            found = [k for k in candidates if names.get(k) == step]
            if len(found) > 1:
                raise BadRequest(
                    f"step: {step!r} names {len(found)} steps of run {run_id} ({', '.join(found)}): give the key"
                )
            if not found:
                shown = ", ".join(names.get(k, k) for k in candidates[:20]) + (", ..." if len(candidates) > 20 else "")
                raise BadRequest(
                    f"step: {step!r} is not a step of run {run_id} (its steps: {shown or 'none'}); a run is "
                    "resumed from a step it committed or the step it stopped at"
                )
            key = found[0]
        keep = order.index(key) if key in committed else len(order)
        return keep, key, names.get(key, key)

    async def _call_fork(
        self,
        old_id: str,
        new_id: str,
        fn: FunctionRecord,
        raw: dict[bytes, bytes],
        events: Sequence[Event],
        keep: int,
        step: str | None,
    ) -> Any:
        at = now_ms()
        first = events[0].to_dict() if events else {}
        create = _CreateRunCall()  # create_run's KEYS and ARGV for the new run, run by fork_run.lua
        await self.store.create_run(
            run_id=new_id,
            fn_slug=fn.slug,
            app_id=fn.app_id,
            queue_id=fn.config.get("queue") or fn.app_id,
            events=events,
            event_ids=[e for e in raw.get(b"event_ids", b"").decode().split(",") if e],
            dedupe_key=None,
            rules=cancel_registrations(new_id, fn.config, first, at),
            limits=self.store.function_limits(fn.config),
            flow=fn.flow,
            pipe=create,
            position=keep,
        )
        args = ForkRunArgs(
            old_run_id=old_id,
            new_run_id=new_id,
            keep=keep,
            from_step=step or "",
            link="forked_from" if step is not None else "replay_of",
            max_links=MAX_LINKS,
            allowed=",".join(s.value for s in REPLAYABLE),
        )
        fork_keys = [
            keys.run(old_id),
            keys.events(old_id),
            keys.memo(old_id),
            keys.stack(old_id),
            keys.steps(old_id),
            keys.memo(new_id),
            keys.stack(new_id),
            keys.steps(new_id),
        ]
        return await self.store.scripts.call("fork_run", [*fork_keys, *create.keys], [*args.argv(), *create.args])

    # -- by filter --------------------------------------------------------------------------------

    async def preview(self, flt: RunFilter, *, cap: int = BULK_CAP) -> Preview:
        """How many runs ``flt`` selects (counted up to ``cap``), without touching them."""
        _check_bulk(flt, cap)
        count, capped = await count_runs(self.redis, flt, cap=cap)
        return Preview(count, capped, cap)

    async def bulk_cancel(
        self, flt: RunFilter, *, reason: str = DEFAULT_REASON, cap: int = BULK_CAP, dry_run: bool = False
    ) -> BulkResult:
        """Cancel the runs ``flt`` selects (at most ``cap``, newest first); ``dry_run``: only count
        them. Runs that ended meanwhile are skipped. ``BadRequest`` for an empty filter or a bad cap."""

        async def cancel(run_id: str) -> str | None:
            done = await self.cancel(run_id, reason)
            return None if done.cancelled else ("already ended" if done.outcome == "done" else done.outcome)

        return await self._bulk("cancel", flt, cap, dry_run, cancel)

    async def bulk_replay(self, flt: RunFilter, *, cap: int = BULK_CAP, dry_run: bool = False) -> BulkResult:
        """Replay the runs ``flt`` selects (at most ``cap``, newest first); ``dry_run``: only count
        them. Runs that cannot be replayed (still running, skipped, expired, function gone) are
        skipped with the reason. ``BadRequest`` for an empty filter or a bad cap."""
        new_runs: dict[str, str] = {}

        async def replay(run_id: str) -> str | None:
            try:
                new_runs[run_id] = (await self.replay(run_id)).run_id
            except ActionRefused as refused:
                return str(refused)
            return None

        result = await self._bulk("replay", flt, cap, dry_run, replay)
        result.new_run_ids = [new_runs[run_id] for run_id in result.done_run_ids]
        return result

    async def _bulk(
        self, action: str, flt: RunFilter, cap: int, dry_run: bool, act: Callable[[str], Awaitable[str | None]]
    ) -> BulkResult:
        _check_bulk(flt, cap)
        if dry_run:
            preview = await self.preview(flt, cap=cap)
            return BulkResult(action, preview.count, preview.capped, True)
        selected = await run_ids(self.redis, flt, cap=cap)
        result = BulkResult(action, len(selected), len(selected) >= cap, False)
        outcomes: dict[str, str | None] = {}

        async def one(run_id: str) -> None:
            outcomes[run_id] = await act(run_id)

        await _bounded(selected, one)
        for run_id in selected:  # in the selection's order (newest first)
            why = outcomes[run_id]
            if why is None:
                result.done_run_ids.append(run_id)
            else:
                result.skipped[run_id] = why
        return result

    # -- a test event -------------------------------------------------------------------------------

    async def send_test_event(self, name: str, data: dict[str, Any] | None = None) -> SentEvent:
        """Send one event (validated as ``stepq send`` does; ``InvalidEventError`` names a bad field)
        and return its stored id and the runs it started."""
        key = f"test-{new_ulid()}"  # its idempotency key: each function's run is found under it
        event = Event(name=name, data=data or {}, id=key).validated()
        [event_id] = await self.ingest.send([event])
        routes = await self.registry.route([name])
        runs: dict[str, str] = {}
        bindings = Bindings(event={**event.to_dict(), "id": key})
        for fn in routes.get(name, []):
            if not triggered(fn, name, bindings):
                continue
            found = await self.redis.get(keys.dedupe(shard_for(fn.slug, fn.flow, bindings, key), fn.slug, key))
            if found:
                runs[found.decode()] = fn.slug
        return SentEvent(event_id, runs)


class _CreateRunCall:
    """Stands in for a Redis client so that ``RunStore.create_run`` hands over its script's KEYS and
    ARGV instead of sending them (as the ingest's batch does): fork_run.lua runs create_run's code
    with exactly those, so the new run is created as any run is."""

    _SHA = hashlib.sha1(source("create_run").encode()).hexdigest()

    def __init__(self) -> None:
        self.keys: list[Any] = []
        self.args: list[Any] = []

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        if sha != self._SHA or self.keys:
            raise RuntimeError("expected one call of runtime/lua/create_run.lua")
        self.keys = list(keys_and_args[:numkeys])
        self.args = list(keys_and_args[numkeys:])


def _check_bulk(flt: RunFilter, cap: int) -> None:
    if flt.empty:
        raise BadRequest(
            "filter: give at least one of function, status, since, until, event (an empty filter is every run)"
        )
    if not 1 <= cap <= BULK_CAP:
        raise BadRequest(f"cap: must be 1..{BULK_CAP}, got {cap}")


def _check_status(run_id: str, status: str) -> None:
    if status in {s.value for s in REPLAYABLE}:
        return
    if status == RunStatus.SKIPPED:
        raise RunConflict(f"run {run_id} was skipped by flow control and never ran: send its event again")
    raise RunConflict(
        f"run {run_id} is {status}: only an ended run (failed, cancelled, completed) runs again; cancel it first"
    )


async def _bounded(items: Sequence[str], act: Callable[[str], Awaitable[None]]) -> None:
    """``act`` on every item, ``BULK_CHUNK`` at a time, at most ``BULK_CONCURRENCY`` at once."""
    for start in range(0, len(items), BULK_CHUNK):
        await gather_bounded(BULK_CONCURRENCY, (act(item) for item in items[start : start + BULK_CHUNK]))
