"""Run state on Redis: create, load, apply a plan (runtime/plan.py), resolve, cancel. Each write is one
atomic Lua script.

A run's truth is its record, its events, its memo (step key -> msgpack wire value) and its stack
(step keys in completion order). The memo and the stack only ever grow, each entry written once, so
a worker may cache them and ask Redis only for what is new.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from stepq.event import Event
from stepq.expressions import Bindings
from stepq.flow_spec import FlowControl

from . import keys
from .codec import pack, unpack
from .concurrency import NONE as NO_SLOTS
from .concurrency import run_slots
from .connection import RedisClient
from .flow_starts import NONE as NO_START_CHECKS
from .flow_starts import StartChecks
from .gather import Gather
from .jobs import FENCE as FENCE  # the run-record field of the run's fence (defined beside the job kinds)
from .jobs import JobSpec, enqueue_keys, fence_field
from .limits import Limits
from .placement import placed
from .plan import JobLease, Plan
from .plan_wire import encode
from .script_args import CreateRunArgs, ResolveStepArgs
from .scripts import Scripts
from .shards import shard_of
from .waits import Registration

#: What a run lives within unless its function registered other limits (kept in the run's record).
DEFAULT_LIMITS = Limits()
#: The run-record field of the trace context the run continues (a W3C traceparent; absent: none).
TRACE_FIELD = "tp"


def now_ms() -> int:
    return int(time.time() * 1000)


class Outcome(enum.StrEnum):
    """What a write script reports."""

    OK = "ok"
    MISSING = "missing"  # no such run (expired, or never created)
    DONE = "done"  # the run already ended
    FENCED = "fenced"  # a newer attempt holds the run: this one's write is refused
    STALE = "stale"  # the run moved past the position this job expected
    DUPLICATE = "duplicate"  # the step was already memoized: first writer won
    CANCELLED = "cancelled"  # the run was cancelled while this step ran: recorded, nothing follows
    JOINED = "joined"  # the last pending step resolved: the run's next job is queued
    STATE_TOO_LARGE = "state_too_large"  # the value would take the run past its state limit: it failed


_OUTCOMES = {outcome.value.encode(): outcome for outcome in Outcome}


@dataclasses.dataclass(frozen=True, slots=True)
class Handoff:
    """The run's next job, handed to the worker whose commit wrote it, under a fresh lease."""

    job_id: str
    #: Its arq payload (as written to the queue).
    payload: bytes
    #: arq's try counter, counted as a claim counts it.
    job_try: int
    #: The fence of the next invocation (the load it skips would have taken it).
    fence: str
    force_plan: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Written:
    """What a write that stores a step's value (or ends a run) did."""

    outcome: Outcome
    #: Runs this write ended for good: the run itself when a value broke its state limit, and any
    #: parent that an invoked run's result failed the same way. Their ends are to be announced.
    ended: tuple[str, ...] = ()
    #: When a plan's write was refused as stale or duplicate, what the nudge found: 'nudged' (it
    #: queued a job re-entering the run), 'queued', 'pending', 'sleeping' or 'done'; else ''.
    nudged: str = ""
    #: The write also ended the job that made it (the worker must not end it again).
    job_ended: bool = False
    #: ... and handed that worker the run's next job.
    handoff: Handoff | None = None

    @classmethod
    def of(cls, reply: Any) -> Written:
        return cls(Outcome(reply[0].decode()), tuple(r.decode() for r in reply[1:]))

    @classmethod
    def of_plan(cls, reply: Any, next_payload: bytes = b"") -> Written:
        """apply_plan.lua's reply: outcome, nudge, ended runs, job ended, and the job handed over."""
        handoff = None
        if len(reply) > 4:
            job_id, job_try, fence, force_plan = reply[4:8]
            handoff = Handoff(job_id.decode(), next_payload, int(job_try), str(fence), force_plan == b"1")
        # read on every step: a dict lookup, not an enum call, for the usual outcomes
        outcome = _OUTCOMES.get(reply[0]) or Outcome(reply[0].decode())
        return cls(
            outcome,
            tuple(r.decode() for r in reply[2]) if reply[2] else (),
            reply[1].decode(),
            job_ended=reply[3] == 1,
            handoff=handoff,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class CachedRun:
    """What a worker knows of a run: its events and the first ``len(stack)`` memo entries.

    Never changed once built: concurrent invocations of one run (its parallel steps) each take a
    snapshot and build a new one from it, so no load sees entries another load appended."""

    events: list[Event]
    memo: dict[str, Any]
    stack: tuple[str, ...]


@dataclasses.dataclass(slots=True)
class LoadedRun:
    """A run claimed for one invocation."""

    run_id: str
    fn_slug: str
    #: The run's queue (its app's id, or ``@http``): every job of the run goes there.
    queue_id: str
    fence: str
    position: int
    events: list[Event]
    memo: dict[str, Any]
    stack: tuple[str, ...]
    #: The run-record field this invocation's fence lives in (one per planned step, else one per run).
    fence_field: str = "fence"
    created_ms: int = 0
    #: True when this invocation is the run's first.
    first_start: bool = False
    #: Steps ran in parallel just before: an SDK should plan its next step, not run it.
    force_plan: bool = False


class RunCache:
    """A bounded LRU of runs' events and memo, so each invocation reads only new memo entries."""

    def __init__(self, max_runs: int = 1024) -> None:
        self._runs: OrderedDict[str, CachedRun] = OrderedDict()
        self._max = max_runs

    def get(self, run_id: str) -> CachedRun | None:
        found = self._runs.get(run_id)
        if found is not None:
            self._runs.move_to_end(run_id)
        return found

    def put(self, run_id: str, run: CachedRun) -> None:
        """Keep ``run`` unless a concurrent load already cached a longer history of it."""
        current = self._runs.get(run_id)
        if current is None or len(current.stack) <= len(run.stack):
            self._runs[run_id] = run
        self._runs.move_to_end(run_id)
        while len(self._runs) > self._max:
            self._runs.popitem(last=False)

    def drop(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def recent(self, n: int) -> dict[str, CachedRun]:
        """The ``n`` runs used last (the snapshots, which never change), without using them."""
        return dict(itertools.islice(reversed(self._runs.items()), n))


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimLoad:
    """A job's load, made by the claim that claimed it (claim_jobs.lua): the job starts with it
    instead of calling load_run."""

    run_id: str
    #: load_run's reply.
    reply: list[Any]
    #: The cached history whose length the claim sent (None: it sent none, the reply holds the
    #: events and the whole memo).
    known: CachedRun | None


@dataclasses.dataclass(frozen=True, slots=True)
class LoadRefused:
    outcome: Outcome
    detail: str = ""


class RunStore:
    """Every read and write of run state."""

    def __init__(self, redis: RedisClient, limits: Limits | None = None) -> None:
        self.redis = redis
        self.limits = limits or Limits()
        self.scripts = Scripts(redis)
        self._defaults = f"{self.limits.max_state_bytes},{self.limits.retention_s}"

    # -- creation ---------------------------------------------------------------------------------

    async def create_run(
        self,
        *,
        run_id: str,
        fn_slug: str,
        app_id: str,
        events: Sequence[Event],
        dedupe_key: str | None,
        queue_id: str | None = None,
        event_ids: Sequence[str] = (),
        parent: str = "",
        rules: Sequence[Registration] = (),
        limits: Limits | None = None,
        flow: FlowControl | None = None,
        checks: StartChecks = NO_START_CHECKS,
        pipe: Any = None,
        gather: Gather | None = None,
        position: int = 0,
        trace: str = "",
    ) -> Any:
        """Create a run and enqueue its first job. Returns ``[created, run_id]`` (or queues it on
        ``pipe``): created is 1, or 0 for a duplicate (``run_id`` is then the existing run), or 2 when
        flow control skipped the start (a third item says why); a created run replacing a singleton's
        run names that run third.

        ``limits``: the function's (``RunStore.function_limits``); the run lives within them.
        ``flow``: the function's flow control (``FunctionRecord.flow``): its concurrency keys and
        priority are evaluated from the first event and kept with the run.
        ``checks``: the start limits to check and charge (``flow_starts.start_checks``).
        ``gather``: the event gathers into a debounced or batched run (runtime/gather.py): it joins
        the open run of its key (``created`` 0, that run's id) or creates one that waits.
        ``position``: where the first job enters the run (0; a run forked with a history: its length,
        see runtime/actions.py).
        ``trace``: the W3C traceparent the run's trace continues ('' : none)."""
        at, shard = now_ms(), shard_of(run_id)
        first = events[0].to_dict() if events else None
        # flow control and dedupe are exact only among runs that meet in one shard
        if not placed(run_id, fn_slug, flow, Bindings(event=first or {}), dedupe_key):
            raise ValueError(
                f"run {run_id} is not in the shard its flow control and dedupe key place it in "
                "(see runtime/placement.py)"
            )
        job = JobSpec(run_id, position)
        blob = pack([e.to_dict() for e in events])
        slots = run_slots(fn_slug, flow, first) if flow else NO_SLOTS
        return await self.scripts.call(
            "create_run",
            [
                keys.run(run_id),
                keys.events(run_id),
                keys.dedupe(shard, fn_slug, dedupe_key) if dedupe_key else keys.run(run_id),
                *enqueue_keys(job, queue_id or app_id),
                keys.runs_active(shard),
                *checks.keys,
                *(key for rule in rules for key in rule.key_names()),
                *([gather.pointer] if gather else []),
            ],
            [
                *CreateRunArgs(
                    run_id=run_id,
                    fn=fn_slug,
                    app=app_id,
                    events_blob=blob,
                    now_ms=at,
                    payload=job.encode(at),
                    ttl_ms=self.limits.job_grace_ms,  # create_run.lua adds a delayed first job's delay
                    dedupe_ttl_s=self.limits.dedupe_s if dedupe_key else 0,
                    event_ids=",".join(event_ids or [e.id for e in events]),
                    parent=parent,
                    limits=(limits or self.limits).run_record(),
                    step_slots=slots.step,
                    run_slots=slots.run,
                    lane=slots.lane,
                    priority=slots.priority,
                    n_rules=len(rules),
                    n_flow=checks.count,
                    defaults=self._defaults,
                    gather=gather.arg if gather else "",
                    event_name=events[0].name if events else "",
                    trace=trace,
                ).argv(),
                *checks.args,
                *(arg for rule in rules for arg in rule.args()),
            ],
            client=pipe,
        )

    def function_limits(self, config: dict[str, Any]) -> Limits:
        """The limits a function's runs live within: those its config was registered with."""
        return Limits().with_config(config.get("limits"))

    # -- one invocation ----------------------------------------------------------------------------

    async def load(self, job: JobSpec, cache: RunCache | None = None) -> LoadedRun | LoadRefused:
        """Claim the run for this job and return its state, or why the job has nothing to do."""
        cached = cache.get(job.run_id) if cache is not None else None
        known = len(cached.stack) if cached is not None else -1
        reply = await self.scripts.call(
            "load_run",
            [
                keys.run(job.run_id),
                keys.events(job.run_id),
                keys.memo(job.run_id),
                keys.stack(job.run_id),
                keys.steps(job.run_id),
                keys.timers(shard_of(job.run_id)),
                keys.pending(job.run_id),
            ],
            [
                job.position,
                known,
                fence_field(job.kind, job.step_key),
                now_ms(),
                job.kind.value,
                job.step_key or "",
                job.run_id,
            ],
        )
        return await self.loaded(job, reply, cached, cache)

    async def claimed(self, job: JobSpec, load: ClaimLoad, cache: RunCache | None = None) -> LoadedRun | LoadRefused:
        """``load``, the load its claim made, as ``load`` would have returned it."""
        return await self.loaded(job, load.reply, load.known, cache)

    async def loaded(
        self, job: JobSpec, reply: Any, cached: CachedRun | None, cache: RunCache | None
    ) -> LoadedRun | LoadRefused:
        """load_run's ``reply`` for ``job``, made knowing the ``cached`` history (None: none)."""
        code = reply[0].decode()
        if code != "ok":
            detail = reply[1].decode() if len(reply) > 1 and isinstance(reply[1], bytes) else str(reply[1:])
            return LoadRefused(Outcome(code), detail)
        fence, fn_slug, queue_id = reply[1], reply[2].decode(), reply[3].decode()
        events_blob, length = reply[4], int(reply[5])
        created_ms, first_start, force_plan = int(reply[6]), bool(reply[7]), reply[8] == b"1"
        new = reply[9:]
        half = len(new) // 2
        new_keys = [k.decode() for k in new[:half]]
        new_values = [unpack(v) if v is not None else None for v in new[half:]]
        if cached is None:
            events = [Event(**e) for e in unpack(events_blob)] if events_blob else []
            state = CachedRun(events, dict(zip(new_keys, new_values, strict=True)), tuple(new_keys))
        else:
            memo = dict(cached.memo)  # a copy: the snapshot may be in use by a concurrent invocation
            memo.update(zip(new_keys, new_values, strict=True))
            state = CachedRun(cached.events, memo, cached.stack + tuple(new_keys))
        if len(state.stack) != length:
            # Redis holds a shorter history than this worker saw (a restart that lost writes): the
            # claim stands, only the cached history is wrong; read the run's history afresh.
            state = await self._read_history(job.run_id, length)
        if cache is not None:
            cache.put(job.run_id, state)
        return LoadedRun(
            run_id=job.run_id,
            fn_slug=fn_slug,
            queue_id=queue_id,
            fence=str(fence),
            position=length,
            events=state.events,
            memo=state.memo,
            stack=state.stack,
            fence_field=fence_field(job.kind, job.step_key),
            created_ms=created_ms,
            first_start=first_start,
            force_plan=force_plan,
        )

    async def _read_history(self, run_id: str, length: int) -> CachedRun:
        """The run's events and its first ``length`` steps, read without claiming anything."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.events(run_id))
            pipe.lrange(keys.stack(run_id), 0, length - 1)
            pipe.hgetall(keys.memo(run_id))
            events_blob, raw_stack, raw_memo = await pipe.execute()
        stack = tuple(k.decode() for k in raw_stack)
        memo = {k: unpack(raw_memo[k.encode()]) if k.encode() in raw_memo else None for k in stack}
        events = [Event(**e) for e in unpack(events_blob)] if events_blob else []
        return CachedRun(events, memo, stack)

    async def apply(self, plan: Plan, lease: JobLease | None = None) -> Written:
        """Apply one invocation's plan of writes atomically (runtime/lua/apply_plan.lua).

        ``lease``: the job applying it, ended by the same call unless the write is fenced off (and,
        if it may, handed the run's next job: ``Written.handoff``)."""
        plan_keys, blob, next_payload = encode(
            plan, defaults=DEFAULT_LIMITS, grace_ms=self.limits.job_grace_ms, lease=lease
        )
        return Written.of_plan(await self.scripts.call("apply_plan", plan_keys, [blob]), next_payload)

    async def step_names(self, run_id: str, step_keys: Sequence[str]) -> dict[str, str]:
        """The user-facing ids of the given steps, for error messages."""
        if not step_keys:
            return {}
        names: list[bytes | None] = await self.redis.hmget(  # type: ignore[misc]
            keys.steps(run_id), [f"{k}:name" for k in step_keys]
        )
        return {k: n.decode() for k, n in zip(step_keys, names, strict=True) if n is not None}

    async def resolve(
        self,
        run_id: str,
        key: str,
        value: Any,
        *,
        name: str = "",
        fence_field: str = "",
        fence: str = "",
        executed: tuple[int, int] | None = None,
        history: bytes = b"",
        packed: bool = False,
    ) -> Written:
        """Memoize ``value`` for a pending step; ``joined`` when it was the last one (the run goes on).

        ``executed``: (attempts, duration ms) when the value is what the step's code just returned;
        ``history``: the fields of the run's history entry for it (runtime/history.py ``entry``);
        ``packed``: ``value`` is msgpack already (bytes)."""
        limits = DEFAULT_LIMITS  # a run's own, if not these, are in its record
        attempts, duration_ms = executed if executed is not None else ("", "")
        reply = await self.scripts.call(
            "resolve_step",
            [keys.run(run_id), keys.memo(run_id), keys.stack(run_id), keys.steps(run_id), keys.pending(run_id)],
            ResolveStepArgs(
                run_id=run_id,
                key=key,
                value=value if packed else pack(value),
                name=name,
                now_ms=now_ms(),
                fence_field=fence_field,
                fence=fence,
                max_state_bytes=limits.max_state_bytes,
                retention_s=limits.retention_s,
                attempts=attempts,
                duration_ms=duration_ms,
                history=history,
            ).argv(),
        )
        return Written.of(reply)

    async def resolve_packed(self, run_id: str, key: str, value: bytes, *, history: bytes = b"") -> Written:
        """``resolve`` with a value packed already: an invoked child's result, delivered from its
        shard's outbox (runtime/outbox.py)."""
        return await self.resolve(run_id, key, value, history=history, packed=True)

    async def record_history(self, run_id: str, history: bytes) -> bool:
        """Append an entry no other write carries to a run's history (an invoked child's start);
        False when the run is gone."""
        reply = await self.scripts.call(
            "record_history", [keys.run(run_id), keys.history(run_id)], [run_id, now_ms(), history]
        )
        return bool(reply == b"ok")

    async def enqueue_for_run(self, run_id: str, queue_id: str, job: JobSpec, due_ms: int) -> None:
        """Enqueue a delayed job of the run; it is dropped if the run ends first."""
        at = now_ms()
        await self.scripts.call(
            "enqueue_job",
            [*enqueue_keys(job, queue_id), keys.jobs(run_id)],
            [job.encode(at), due_ms, max(0, due_ms - at) + self.limits.job_grace_ms],
        )

    async def cancel(self, run_id: str, reason: str) -> Written:
        """Cancel a run: status ``cancelled``, no further steps, its delayed jobs and waits dropped."""
        error = {"name": "Cancelled", "message": reason, "stack": ""}
        limits = DEFAULT_LIMITS  # a run's own, if not these, are in its record
        reply = await self.scripts.call(
            "cancel_run",
            [
                keys.run(run_id),
                keys.events(run_id),
                keys.memo(run_id),
                keys.stack(run_id),
                keys.steps(run_id),
                keys.pending(run_id),
                keys.jobs(run_id),
                keys.timers(shard_of(run_id)),
                keys.runs_active(shard_of(run_id)),
                keys.runs_done(shard_of(run_id)),
            ],
            [run_id, now_ms(), limits.retention_s, pack(error), limits.max_state_bytes],
        )
        return Written.of(reply)
