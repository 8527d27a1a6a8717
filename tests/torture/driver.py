"""The torture driver: sends a few hundred generated programs to a faulty cluster, plays the part of
the outside world (events the waits expect, cancellations), snapshots every run as it ends, then
checks every invariant and the cluster's leftovers.

``Torture(config, directory).run()`` returns a ``Report``; its ``failure_message()`` names the seed,
the command that reproduces the run, and each violation with the run, its program and what differs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

import sdk
from runtime import keys
from runtime.codec import unpack
from runtime.connection import connect
from runtime.limits import Limits
from runtime.transport import RedisTransport
from runtime.waits import WaitRecord
from tests.torture.cluster import Cluster, Settings
from tests.torture.faults import FaultLog, FaultPlan, Faults
from tests.torture.interpreter import executions_key
from tests.torture.invariants import Execution, RunSnapshot, Tally, Violation, check_run, sha1
from tests.torture.model import Expected, Model, child_programs, memo_oracle
from tests.torture.program import (
    KNOWN_SHAPES,
    SIGNAL,
    Generator,
    Mix,
    Op,
    Program,
    describe,
    signal_value,
    step_id,
    walk,
)

TERMINAL = ("completed", "failed", "cancelled")
#: Log events of the workers worth counting in the report.
NOTABLE = (
    "commit.refused",
    "fan_out.refused",
    "finish.refused",
    "lease.lost",
    "job.internal_error",
    "job.ended_with_error",
    "job.redis_unavailable",
    "redis.unavailable",
    "timer.revived",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    seed: int
    #: Top-level programs sent (invoked children come on top).
    runs: int = 240
    #: Programs are sent over about this long, so faults land on runs at every stage.
    send_over_s: float = 45.0
    settings: Settings = dataclasses.field(default_factory=Settings)
    faults: FaultPlan = dataclasses.field(default_factory=FaultPlan)
    #: No new faults after this (seconds from the first send); the fleet then finishes the runs.
    faults_until_s: float = 50.0
    #: Each run must end within twice its nominal duration plus this.
    slack_s: float = 45.0
    #: After every run ended, wait for the retention and check that Redis returned to its baseline.
    check_memory: bool = True
    mix: Mix = dataclasses.field(default_factory=Mix)
    #: Only these programs (by pid), for reproducing one failure.
    only: tuple[str, ...] = ()
    #: These programs instead of generated ones (lists of ops), for reducing a failure by hand.
    explicit: tuple[list[Op], ...] = ()
    #: Also send the shapes that once left runs stuck (``program.KNOWN_SHAPES``).
    known_shapes: bool = True

    def command(self) -> str:
        return f"STEPQ_TORTURE_SEED={self.seed} scripts/test tests/test_torture.py"


@dataclasses.dataclass(slots=True)
class Action:
    """Something the driver must do for a run: send the event a wait expects, or cancel the run."""

    kind: str  # match, race, cancel
    name: str
    key: str
    op: Op
    done: bool = False
    sent_at: float = 0.0
    due_ms: int | None = None


@dataclasses.dataclass(slots=True)
class Track:
    """One program's run, as the driver follows it."""

    pid: str
    program: Program
    top: bool
    actions: list[Action]
    sent_ms: int | None = None
    run_id: str | None = None
    status: str = ""
    snap: RunSnapshot | None = None
    resnap_at: float | None = None
    last_raw: dict[bytes, bytes] = dataclasses.field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return "torture-http" if self.program.get("app") == "http" else "torture"

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


def explicit_programs(shapes: tuple[list[Op], ...], prefix: str) -> list[Program]:
    """Each list of ops as a program in-process (``<prefix>3``) and over HTTP (``<prefix>h3``)."""
    local = [{"pid": f"{prefix}{i}", "app": "local", "ops": ops} for i, ops in enumerate(shapes)]
    return local + [{"pid": f"{prefix}h{i}", "app": "http", "ops": ops} for i, ops in enumerate(shapes)]


def actions_of(program: Program) -> list[Action]:
    out = []
    for path, op in walk(program["ops"]):
        if op["op"] == "run" and op.get("kill"):
            name = step_id("r", path)
            out.append(Action("kill", name, sha1(name), op))
        if op["op"] == "wait" and op["outcome"] in ("match", "race"):
            name = step_id("w", path)
            out.append(Action(op["outcome"], name, sha1(name), op))
        elif op["op"] == "cancel":
            name = step_id("k", path)
            out.append(Action("cancel", name, sha1(name), op))
    return out


@dataclasses.dataclass(slots=True)
class Report:
    config: Config
    directory: Path
    tally: Tally = dataclasses.field(default_factory=Tally)
    violations: list[Violation] = dataclasses.field(default_factory=list)
    programs: dict[str, Program] = dataclasses.field(default_factory=dict)
    faults: FaultLog = dataclasses.field(default_factory=FaultLog)
    notable: Counter[str] = dataclasses.field(default_factory=Counter)
    elapsed_s: float = 0.0
    memory: str = ""
    events_sent: int = 0
    cancels: int = 0

    def figures(self) -> str:
        t = self.tally
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(t.statuses.items()))
        notable = ", ".join(f"{k} {v}" for k, v in sorted(self.notable.items())) or "none"
        return (
            f"seed {self.config.seed}: {t.runs} runs ({statuses}), {t.steps} steps committed, "
            f"{t.executions} step executions, {t.duplicate_executions} duplicate executions, "
            f"{self.events_sent} events sent, {self.cancels} cancels; faults: {self.faults.summary()}; "
            f"worker log events: {notable}; {self.memory}; {len(self.violations)} violations; "
            f"{self.elapsed_s:.0f} s"
        )

    def failure_message(self, limit: int = 12) -> str:
        by_kind = Counter(v.invariant for v in self.violations)
        lines = [
            f"torture run failed: seed {self.config.seed} (reproduce: {self.config.command()})",
            self.figures(),
            "violations by invariant: " + ", ".join(f"{k} {n}" for k, n in by_kind.most_common()),
        ]
        for v in self.violations[:limit]:
            lines.append(v.render(self.programs.get(v.pid)))
        if len(self.violations) > limit:
            lines.append(f"... {len(self.violations) - limit} more in {self.directory / 'violations.txt'}")
        for at, name, tail in self.faults.deaths[:3]:
            lines.append(f"worker {name} died on its own at {at} s:\n{tail[-1500:]}")
        lines.append(f"process logs: {self.directory}")
        return "\n".join(lines)

    def write(self) -> None:
        with (self.directory / "violations.txt").open("w") as f:
            f.write(self.figures() + "\n\nfaults:\n")
            f.write("\n".join(self.faults.around(0, float("inf"))) + "\n\n")
            for v in self.violations:
                f.write(v.render(self.programs.get(v.pid)) + "\n\n")


class Torture:
    def __init__(self, config: Config, directory: Path) -> None:
        self.config = config
        self.directory = directory
        self.cluster = Cluster(directory, config.settings)
        self.report = Report(config, directory)
        self.tracks: dict[str, Track] = {}
        self.by_run: dict[str, Track] = {}
        self.rng = random.Random(config.seed ^ 0x5EED)
        self.redis: Redis | None = None
        self.faults: Faults | None = None
        self.local: sdk.Client | None = None
        self.http: sdk.Client | None = None
        self._seen_done_ms = 0
        self._logs: dict[str, list[tuple[str, str, dict[str, Any]]]] | None = None
        #: Runs that never ended: what they hold is not counted again as leftovers.
        self.stranded: set[str] = set()

    # -- setup --------------------------------------------------------------------------------------

    def _programs(self) -> list[Program]:
        programs = Generator(self.config.seed, self.config.mix).programs(self.config.runs)
        if self.config.explicit:
            programs = explicit_programs(self.config.explicit, "x")
        elif self.config.known_shapes and not self.config.only:
            # spread among the generated ones, so that they meet the faults too
            known = explicit_programs(KNOWN_SHAPES, "k")
            step = max(1, len(programs) // (len(known) + 1))
            for i, program in enumerate(known):
                programs.insert(min(len(programs), (i + 1) * step + i), program)
        if self.config.only:
            programs = [p for p in programs if p["pid"] in self.config.only]
        for program in programs:
            self.tracks[program["pid"]] = Track(program["pid"], program, True, actions_of(program))
            self.report.programs[program["pid"]] = program
            for cpid, child in child_programs(program).items():
                self.tracks[cpid] = Track(cpid, child, False, actions_of(child))
                self.report.programs[cpid] = child
        return programs

    async def run(self) -> Report:
        began = time.monotonic()
        # In this (the main) thread: Redis then dies with this process however it ends.
        self.cluster.start()
        self.redis = connect(self.cluster.redis_url)
        # The driver's own writes (events, cancellations) follow the cluster's retention too.
        limits = Limits(retention_s=self.config.settings.retention_s)
        self.local = sdk.Client("t-torture-driver", transport=RedisTransport(self.cluster.redis_url, limits))
        self.http = sdk.Client("t-torture-driver-http", event_api_url=self.cluster.api_url, event_key="torture")
        try:
            baseline = await self._census()
            programs = self._programs()
            stop = asyncio.Event()
            faults = Faults(self.cluster, self.config.seed ^ 0xFA17, self.config.faults)
            self.faults = faults
            self.report.faults = faults.log
            fault_task = asyncio.create_task(faults.run(self.config.faults_until_s, stop))
            sender = asyncio.create_task(self._send_all(programs))
            try:
                await self._watch(sender)
            finally:
                stop.set()
                await fault_task
                await sender
            faults.reap()
            for service in (self.cluster.api, self.cluster.app):
                if service is not None and not service.alive():
                    detail = f"{service.name} exited with {service.proc.returncode}: {service.stderr()[-800:]}"
                    self.report.violations.append(Violation("process-death", "-", "-", detail))
            for at, name, tail in faults.log.deaths:
                self.report.violations.append(
                    Violation("worker-death", "-", "-", f"{name} exited on its own at {at} s: {tail[-800:]}")
                )
            await self._quiesce()
            await self._check()
            if self.config.check_memory and not (self.config.only or self.config.explicit or self.stranded):
                await self._memory(baseline)
            elif self.stranded:
                self.report.memory = f"memory not checked: {len(self.stranded)} runs never ended"
        finally:
            self.report.elapsed_s = time.monotonic() - began
            self.report.notable = self._notable()
            await self.local.aclose()
            await self.http.aclose()
            await self.redis.aclose()
            await asyncio.to_thread(self.cluster.stop)
            self.report.write()
        return self.report

    # -- sending ------------------------------------------------------------------------------------

    async def _send(self, client: sdk.Client, event: sdk.Event, what: str) -> None:
        """Send, retrying while Redis or the API is away; an event id keeps a retry from starting twice."""
        deadline = time.monotonic() + 60
        while True:
            try:
                await client.send(event)
                self.report.events_sent += 1
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    self.report.violations.append(
                        Violation("send", "-", "-", f"could not send {what} for 60 s: {exc!r}")
                    )
                    return
                await asyncio.sleep(0.3)

    async def _send_all(self, programs: list[Program]) -> None:
        began = time.monotonic()
        gap = self.config.send_over_s / max(1, len(programs))
        for i, program in enumerate(programs):
            await asyncio.sleep(max(0.0, began + i * gap - time.monotonic()))
            track = self.tracks[program["pid"]]
            client = self.http if track.prefix == "torture-http" else self.local
            assert client is not None
            event = sdk.Event(name=f"{track.prefix}/run", data={"pid": track.pid, "ops": program["ops"]}, id=track.pid)
            track.sent_ms = int(time.time() * 1000)
            await self._send(client, event, f"the event of {track.pid}")

    async def _signal(self, op: Op) -> None:
        assert self.local is not None
        event = sdk.Event(name=SIGNAL, data={"tok": op["tok"], "v": signal_value(op["tok"])})
        await self._send(self.local, event, f"the signal {op['tok']}")

    async def _cancel(self, track: Track, action: Action) -> None:
        assert self.local is not None and track.run_id is not None
        self.report.cancels += 1
        if action.op["via"] == "api":
            try:
                await self.local.cancel(track.run_id, reason="the torture driver")
            except Exception as exc:
                self.report.violations.append(
                    Violation("cancel", track.pid, track.run_id, f"client.cancel raised {exc!r}")
                )
        else:
            event = sdk.Event(name=f"{track.prefix}/cancel", data={"pid": track.pid})
            await self._send(self.local, event, f"the cancel event of {track.pid}")

    # -- watching -----------------------------------------------------------------------------------

    def _deadline(self) -> float:
        """When every run must have ended (a hard stop for the watch loop)."""
        longest = max((Model(t.program).expect().nominal_s for t in self.tracks.values() if t.top), default=0.0)
        return time.monotonic() + self.config.send_over_s + 2 * longest + self.config.slack_s + 30

    async def _watch(self, sender: asyncio.Task[None]) -> None:
        deadline = self._deadline()
        quiet_since = time.monotonic()
        while True:
            try:
                found = await self._discover()
                await self._follow()
            except (RedisError, OSError):
                await asyncio.sleep(0.2)  # Redis is restarting
                continue
            now = time.monotonic()
            if found:
                quiet_since = now
            tops = [t for t in self.tracks.values() if t.top]
            settled = all(t.run_id is not None for t in tops) and all(t.ended for t in self.tracks.values() if t.run_id)
            if (
                sender.done()
                and settled
                and now - quiet_since > 3
                and all(t.resnap_at is None for t in self.tracks.values())
            ):
                return
            if now > deadline:
                await self._stragglers()
                return
            await asyncio.sleep(0.1)

    async def _discover(self) -> bool:
        """Find runs started since the last look; tie each to its program by the pid in its event."""
        assert self.redis is not None
        active = await self.redis.zrange(keys.RUNS_ACTIVE, 0, -1)
        done = await self.redis.zrangebyscore(keys.RUNS_DONE, self._seen_done_ms - 5000, "+inf", withscores=True)
        if done:
            self._seen_done_ms = max(self._seen_done_ms, int(max(score for _, score in done)))
        new = [r.decode() for r in [*active, *(member for member, _ in done)] if r.decode() not in self.by_run]
        if not new:
            return False
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id in new:
                pipe.get(keys.events(run_id))
            blobs = await pipe.execute()
        for run_id, blob in zip(new, blobs, strict=True):
            if blob is None:
                continue
            events = unpack(blob)
            pid = (events[0].get("data") or {}).get("pid") if events else None
            track = self.tracks.get(pid) if isinstance(pid, str) else None
            if track is None:
                continue
            if track.run_id is not None and track.run_id != run_id:
                self.report.violations.append(
                    Violation("one-run", track.pid, run_id, f"a second run for the program (first {track.run_id})")
                )
                continue
            track.run_id = run_id
            self.by_run[run_id] = track
        return True

    async def _follow(self) -> None:
        """Act for the runs still going, and snapshot those that ended."""
        assert self.redis is not None
        live = [t for t in self.tracks.values() if t.run_id is not None and (not t.ended or t.resnap_at is not None)]
        if not live:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for track in live:
                assert track.run_id is not None
                pipe.hgetall(keys.run(track.run_id))
            records = await pipe.execute()
        now = time.monotonic()
        for track, raw in zip(live, records, strict=True):
            if not raw:
                continue
            track.last_raw = raw
            status = raw.get(b"status", b"").decode()
            if status in TERMINAL:
                if not track.ended:
                    track.status = status
                    track.snap = await self._snapshot(track)
                    track.resnap_at = now + 3.0  # a step running at a cancel may still record its result
                elif track.resnap_at is not None and now >= track.resnap_at:
                    track.snap = await self._snapshot(track) or track.snap
                    track.resnap_at = None
                continue
            track.status = status
            await self._act(track, raw)

    async def _act(self, track: Track, raw: dict[bytes, bytes]) -> None:
        assert self.redis is not None
        now_ms = int(time.time() * 1000)
        for action in track.actions:
            if action.done:
                continue
            registered = f"wait:{action.key}".encode() in raw
            if action.kind == "match" and registered:
                if time.monotonic() - action.sent_at > 3.0:  # (again, if the first did not land)
                    action.sent_at = time.monotonic()
                    await self._signal(action.op)
            elif action.kind == "race" and registered and action.due_ms is None:
                where = raw[f"wait:{action.key}".encode()].decode().split("\n")
                blob = await self.redis.hget(where[0], where[2])  # type: ignore[misc]
                if blob is not None:
                    # the event arrives at the instant the wait times out, give or take 40 ms
                    action.due_ms = WaitRecord.decode(blob).expires_ms + self.rng.randint(-40, 40)
            elif action.kind == "race" and action.due_ms is not None and now_ms >= action.due_ms:
                action.done = True
                await self._signal(action.op)
            elif action.kind == "cancel" and await self._at_hold(track, action, raw, registered):
                action.done = True
                await self._cancel(track, action)
            elif action.kind == "kill":
                entries: list[bytes] = await self.redis.lrange(executions_key(track.pid), 0, -1)  # type: ignore[misc]
                ran = [Execution.parse(e.decode()) for e in entries if e.decode().startswith(action.name + "|")]
                if ran and self.faults is not None and self.config.faults.targeted_kills:
                    action.done = True
                    victim = self.faults.worker_running(ran[0].os_pid, track.program.get("app") == "http")
                    if victim is not None:
                        self.faults.kill(victim, f"inside step {action.name} of {track.pid}")
        # a match whose wait is resolved needs nothing more
        for action in track.actions:
            if action.kind == "match" and action.sent_at and f"wait:{action.key}".encode() not in raw:
                action.done = True

    async def _at_hold(self, track: Track, action: Action, raw: dict[bytes, bytes], registered: bool) -> bool:
        """Whether the run reached its cancel op: waiting there, sleeping there, or inside its slow step."""
        assert self.redis is not None
        at = action.op["at"]
        if at == "wait":
            return registered
        if at == "sleep":
            return raw.get(b"sleep_key") == action.key.encode()
        entries: list[bytes] = await self.redis.lrange(executions_key(track.pid), 0, -1)  # type: ignore[misc]
        return any(e.decode().startswith(action.name + "|") for e in entries)

    async def _snapshot(self, track: Track) -> RunSnapshot | None:
        """The ended run's state, and anything it left behind that its end should have dropped."""
        assert self.redis is not None and track.run_id is not None
        run_id = track.run_id
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.run(run_id))
            pipe.lrange(keys.stack(run_id), 0, -1)
            pipe.hgetall(keys.memo(run_id))
            pipe.smembers(keys.pending(run_id))
            pipe.smembers(keys.jobs(run_id))
            raw, stack, memo, pending, jobs = await pipe.execute()
        if not raw:
            return None
        leftovers = []
        waits = [k.decode() for k in raw if k.startswith(b"wait:") or k.startswith(b"cancel")]
        if waits:
            leftovers.append(f"waits still registered: {waits}")
        for field in (b"timer", b"sleep_key", b"join_id", b"next_job"):
            if field in raw:
                leftovers.append(f"run record keeps {field.decode()}={raw[field].decode()}")
        if pending:
            leftovers.append(f"pending set not dropped: {sorted(p.decode() for p in pending)}")
        if jobs:
            leftovers.append(f"delayed-jobs set not dropped: {sorted(j.decode() for j in jobs)}")
        return RunSnapshot(
            run_id=run_id,
            pid=track.pid,
            status=raw.get(b"status", b"").decode(),
            output=unpack(raw[b"output"]) if b"output" in raw else None,
            error=unpack(raw[b"error"]) if b"error" in raw else None,
            memo={k.decode(): unpack(v) for k, v in memo.items()},
            stack=[k.decode() for k in stack],
            created_ms=int(raw.get(b"created", b"0")),
            ended_ms=int(raw[b"ended"]) if b"ended" in raw else None,
            leftovers=leftovers,
        )

    async def _stragglers(self) -> None:
        """Runs that never ended: say where each is stuck, and the likeliest reason."""
        assert self.redis is not None
        for track in self.tracks.values():
            if track.top and track.run_id is None:
                self.report.violations.append(
                    Violation("ended", track.pid, "-", "no run was ever created for the program")
                )
            if track.run_id is None or track.ended:
                continue
            self.stranded.add(track.run_id)
            names = {sha1(n): n for n in Model(track.program).expect().all_steps}
            raw = {k.decode(): v.decode(errors="replace") for k, v in track.last_raw.items()}
            fields = {
                k: names.get(v, v)[:60]
                for k, v in raw.items()
                if k not in ("event_ids", "join_job", "fn", "app", "q", "created", "started", "output", "error")
                and not k.startswith(("fence:", "wait:cancel"))
            }
            jobs = await self._jobs_of(track.run_id)
            pending_keys: set[bytes] = await self.redis.smembers(keys.pending(track.run_id))  # type: ignore[misc]
            stack_keys: list[bytes] = await self.redis.lrange(keys.stack(track.run_id), 0, -1)  # type: ignore[misc]
            pending = [names.get(p.decode(), p.decode()) for p in pending_keys]
            stack = [names.get(k.decode(), k.decode()) for k in stack_keys]
            logs = self._log_lines(track.run_id)
            why = self._diagnose(track, raw, names, pending, stack, jobs, logs)
            last = self._last_log_time(track.run_id)
            if last is not None:
                lease = self.config.settings.lease_s
                faults = self.report.faults.around(last - 2, last + lease + 3)
                logs += f"; faults around its last invocation: {faults or 'none'}"
            self.report.violations.append(
                Violation(
                    "ended",
                    track.pid,
                    track.run_id,
                    f"never ended, {why}: status {track.status or '?'}; record {fields}; stack {stack[-6:]} "
                    f"({len(stack)} steps); pending {sorted(pending)}; queued jobs {jobs}; {logs}",
                )
            )

    def _diagnose(
        self,
        track: Track,
        raw: dict[str, str],
        names: dict[str, str],
        pending: list[str],
        stack: list[str],
        jobs: list[str],
        logs: str,
    ) -> str:
        """The likeliest reason a run is stuck, from what it left (a guess to sort failures by)."""
        if pending and "refused:fenced" in logs:
            return "a parallel step's result was refused as fenced, so the step stays pending"
        if "sleep_key" in raw and not names.get(raw["sleep_key"], "s").startswith("s"):
            step = names.get(raw["sleep_key"], raw["sleep_key"]) or "(the function itself)"
            return f"a retry scheduled by a sleep's wake-up job took the sleep's place (its timer now names {step})"
        if "timer" in raw and names.get(raw.get("sleep_key", ""), "?") in stack:
            step = names[raw["sleep_key"]]
            return f"its timer waits for sleep {step}, which is already done (a retry scheduled by its wake-up job?)"
        children = [self.tracks.get(f"{track.pid}/{p}") for p in pending if p.startswith("i")]
        if any(c is not None and c.run_id is not None and not c.ended for c in children):
            return "it waits for an invoked child that never ended"
        if not pending and not jobs and "timer" not in raw and stack and stack[-1].startswith("s"):
            return "the step after a sleep was lost (its wake-up job ran again and found the sleep done: stale)"
        if not pending and not jobs and "timer" not in raw:
            return "nothing is queued, pending or sleeping for it"
        return "cause unknown"

    async def _jobs_of(self, run_id: str) -> list[str]:
        assert self.redis is not None
        out = []
        for queue in await self._queues():
            for member, score in await self.redis.zrange(queue, 0, -1, withscores=True):
                if member.decode().startswith(run_id + ":"):
                    late = (time.time() * 1000 - score) / 1000
                    job = await self.redis.exists(keys.ARQ_JOB + member.decode())
                    out.append(f"{member.decode()} (due {late:+.1f} s ago, job key {'present' if job else 'missing'})")
        return out

    def _last_log_time(self, run_id: str) -> float | None:
        self._log_lines(run_id)  # builds the index
        assert self._logs is not None
        lines = self._logs.get(run_id, [])
        stamps = [t for t, _, e in lines if t and e.get("event") == "invocation"] or [t for t, _, _ in lines if t]
        if not stamps:
            return None
        return dt.datetime.fromisoformat(max(stamps).replace("Z", "+00:00")).timestamp()

    async def _queues(self) -> list[bytes]:
        """The queue zsets (arq keeps a health-check string under the same prefix)."""
        assert self.redis is not None
        found = [k async for k in self.redis.scan_iter(match=keys.queue("*"))]
        return [k for k in found if await self.redis.type(k) == b"zset"]

    def _log_lines(self, run_id: str, limit: int = 8) -> str:
        """The workers' last log lines about a run."""
        if self._logs is None:
            self._logs = {}
            for worker in self.cluster.all_workers():
                for entry in worker.logs():
                    rid = entry.get("run_id") or str(entry.get("job_id", "")).split(":")[0]
                    if rid:
                        self._logs.setdefault(str(rid), []).append(
                            (str(entry.get("timestamp", "")), worker.name, entry)
                        )
        lines = sorted(self._logs.get(run_id, []), key=lambda x: x[0])
        drop = ("run_id", "logger", "level", "function")
        shown = [
            f"{name}: {json.dumps({k: v for k, v in e.items() if k not in drop})}" for _, name, e in lines[-limit:]
        ]
        return "last log lines: " + (" | ".join(shown) if shown else "none")

    # -- the end ------------------------------------------------------------------------------------

    async def _quiesce(self, timeout: float = 20.0) -> None:
        """Wait until no worker runs a job, so every execution is recorded."""
        assert self.redis is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                busy = [k async for k in self.redis.scan_iter(match=keys.ARQ_IN_PROGRESS + "*")]
            except (RedisError, OSError):
                busy = ["?"]
            if not busy:
                return
            await asyncio.sleep(0.2)

    async def _check(self) -> None:
        assert self.redis is not None
        ran = [t for t in self.tracks.values() if t.snap is not None]
        async with self.redis.pipeline(transaction=False) as pipe:
            for track in ran:
                pipe.lrange(executions_key(track.pid), 0, -1)
            entries = await pipe.execute()
        expectations: dict[str, Expected] = {}
        for track, raw in zip(ran, entries, strict=True):
            assert track.snap is not None
            expected = Model(track.program, memo_oracle(track.snap.memo, sha1)).expect()
            expectations[track.pid] = expected
            executions = [Execution.parse(e.decode()) for e in raw]
            violations, tally = check_run(track.snap, expected, executions)
            violations += [
                Violation("leftovers", track.pid, track.run_id or "-", item) for item in track.snap.leftovers
            ]
            if track.top and track.sent_ms is not None and track.snap.ended_ms is not None:
                took = (track.snap.ended_ms - track.sent_ms) / 1000
                # Under load on two cores an invocation may take a second or more (served ones most).
                steps = len(expected.all_steps) + sum(
                    len(Model(c).expect().all_steps) for c in child_programs(track.program).values()
                )
                bound = 2 * expected.nominal_s + self.config.slack_s + 0.5 * steps
                if took > bound:
                    violations.append(
                        Violation(
                            "ended",
                            track.pid,
                            track.run_id or "-",
                            f"ended {took:.1f} s after it was sent, over its bound of {bound:.1f} s",
                        )
                    )
            if violations and track.run_id:
                detail = self._log_lines(track.run_id)
                violations = [
                    dataclasses.replace(v, detail=f"{v.detail}\n    {detail}") if i == 0 else v
                    for i, v in enumerate(violations)
                ]
            self.report.violations += violations
            self.report.tally.add(tally)
        # children the parents' memos say ran must exist and have ended as the parents saw
        for track in ran:
            expected = expectations[track.pid]
            assert track.snap is not None
            for name, step in expected.must.items():
                if step.kind != "invoke" or step.child is None or sha1(name) not in track.snap.memo:
                    continue
                child = self.tracks.get(step.child[0])
                if child is None or child.run_id is None:
                    self.report.violations.append(
                        Violation(
                            "invoke",
                            track.pid,
                            track.run_id or "-",
                            f"invoke {name} is resolved but no child run {step.child[0]} exists",
                        )
                    )
                elif not child.ended:
                    self.report.violations.append(
                        Violation(
                            "invoke",
                            track.pid,
                            track.run_id or "-",
                            f"invoke {name} is resolved but its child {child.run_id} is {child.status}",
                        )
                    )
        await self._global_leftovers()

    async def _global_leftovers(self) -> None:
        """Once every run ended: no job queued, no timer, no wait, no active run (what runs that never
        ended hold is theirs, already reported)."""
        assert self.redis is not None

        def others(members: list[str]) -> list[str]:
            return [m for m in members if not any(m.startswith(r) or f"|{r}|" in m for r in self.stranded)]

        problems = []
        for queue in await self._queues():
            members = others([m.decode() for m in await self.redis.zrange(queue, 0, -1)])
            if members:
                problems.append(f"{queue.decode()} holds {len(members)} jobs: {members[:5]}")
        arq_jobs = others(
            [k.decode().removeprefix(keys.ARQ_JOB) async for k in self.redis.scan_iter(match=keys.ARQ_JOB + "*")]
        )
        if arq_jobs:
            problems.append(f"{len(arq_jobs)} arq job keys remain: {arq_jobs[:5]}")
        if timers := others([t.decode() for t in await self.redis.zrange(keys.TIMERS, 0, -1)]):
            problems.append(f"{keys.TIMERS} holds {timers[:5]}")
        async for key in self.redis.scan_iter(match=keys.waits("*")):
            members = others([m.decode() for m in await self.redis.hkeys(key)])  # type: ignore[misc]
            if members:
                problems.append(f"{key.decode()} still holds waits of ended runs: {members[:5]}")
        for pattern in (keys.wait_scan("*"), keys.wait_index("*", "*", "*")):
            async for key in self.redis.scan_iter(match=pattern):
                members = others([m.decode() for m in await self.redis.smembers(key)])  # type: ignore[misc]
                if members:
                    problems.append(f"{key.decode()} still indexes waits of ended runs: {members[:5]}")
        active = others([a.decode() for a in await self.redis.zrange(keys.RUNS_ACTIVE, 0, -1)])
        if active:
            problems.append(f"{keys.RUNS_ACTIVE} lists runs that ended or are unknown: {active[:5]}")
        for problem in problems:
            self.report.violations.append(Violation("leftovers", "-", "-", problem))

    async def _census(self, *, sizes_of_keys: bool = False) -> dict[str, Any]:
        """Redis memory, keys by kind (the test's own ``torture:`` keys apart) and the indexes' sizes;
        with ``sizes_of_keys``, the bytes of each kind too (MEMORY USAGE)."""
        assert self.redis is not None
        kinds: Counter[str] = Counter()
        usage: Counter[str] = Counter()
        async for key in self.redis.scan_iter(count=1000):
            text = key.decode()
            if text.startswith("torture:"):
                if sizes_of_keys:
                    usage["(the test's torture: keys)"] += int(await self.redis.memory_usage(key) or 0)
                continue
            kind = "run keys" if text.startswith("stepq:{") else ":".join(text.split(":")[:2])
            kinds[kind] += 1
            if sizes_of_keys:
                usage[kind] += int(await self.redis.memory_usage(key) or 0)
        # Redis's own diagnostics are not the runs' memory: the slow log keeps copies of slow commands'
        # arguments, and each command used gets a latency histogram (tens of KiB) on first use.
        await self.redis.slowlog_reset()
        await self.redis.config_resetstat()
        sizes = {}
        for index in (keys.RUNS_ACTIVE, keys.RUNS_DONE, keys.EVENTS, keys.TIMERS):
            sizes[index] = int(await self.redis.zcard(index))
        info = await self.redis.info("memory")
        # The dataset: used memory less the server's overhead (client buffers, scripts, the AOF buffer),
        # which depends on how many connections the fleet holds at the moment, not on the runs.
        return {"used": int(info["used_memory_dataset"]), "kinds": kinds, "sizes": sizes, "info": info, "usage": usage}

    async def _memory(self, baseline: dict[str, Any]) -> None:
        """After the last run's retention: no run keys, indexes trimmed, memory back near the baseline."""
        assert self.redis is not None and self.local is not None
        ends = [t.snap.ended_ms for t in self.tracks.values() if t.snap is not None and t.snap.ended_ms]
        retention_ms = self.config.settings.retention_s * 1000
        wait_s = (max(ends, default=0) + retention_ms - time.time() * 1000) / 1000 + 2
        await asyncio.sleep(max(0.0, wait_s))
        # A last run trims the indexes (runs and events are trimmed to the retention as new ones come).
        probe = {"pid": "probe", "ops": []}
        self.tracks["probe"] = Track("probe", probe, False, [])
        await self._send(self.local, sdk.Event(name="torture/run", data=probe), "the probe")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await self._discover()
            await self._follow()
            if self.tracks["probe"].ended:
                break
            await asyncio.sleep(0.1)
        await self._quiesce()  # the probe's job leaves arq's bookkeeping once it returns
        # The test's own records of executions were read by the checks: they are not the runs' memory.
        async for key in self.redis.scan_iter(match="torture:*", count=1000):
            await self.redis.delete(key)
        for _ in range(50):  # let Redis's active expiry catch up
            after = await self._census(sizes_of_keys=True)
            if after["kinds"]["run keys"] <= 5:  # the probe's own keys
                break
            await asyncio.sleep(0.2)
        grew = after["used"] - baseline["used"]
        kinds = after["kinds"] - baseline["kinds"]
        dedupe = kinds.pop("stepq:dedupe", 0)  # an event id is an idempotency key for 24 h, by design
        self.report.memory = (
            f"Redis dataset {baseline['used'] / 1024:.0f} KiB before the runs, {after['used'] / 1024:.0f} KiB after "
            f"their retention ({grew / 1024:+.0f} KiB, with {dedupe} idempotency keys that live 24 h; used_memory "
            f"{baseline['info']['used_memory'] / 1024:.0f} -> {after['info']['used_memory'] / 1024:.0f} KiB)"
        )
        # What the probe run itself holds, and per-name bookkeeping bounded by the event names in use.
        allowed = {
            "run keys": 5,
            "stepq:event": 1,
            "stepq:recent": 2,
            "stepq:waitpaths": 8,
            "stepq:events": 1,
            "stepq:runs": 2,
        }
        leftover = {k: n for k, n in kinds.items() if n > allowed.get(k, 0)}
        if leftover:
            self.report.violations.append(Violation("memory", "-", "-", f"keys left after the retention: {leftover}"))
        for index, size in after["sizes"].items():
            if size > 1:
                self.report.violations.append(
                    Violation("memory", "-", "-", f"{index} still lists {size} entries after the retention")
                )
        # Each run leaves its 24-hour idempotency key (about 150 bytes); nothing else may stay.
        allowed_bytes = 64 * 1024 + 200 * self.report.tally.runs
        if grew > allowed_bytes:
            self.report.violations.append(
                Violation(
                    "memory",
                    "-",
                    "-",
                    f"Redis memory grew by {grew / 1024:.0f} KiB over the baseline "
                    f"(allowed {allowed_bytes / 1024:.0f} KiB): keys {dict(after['kinds'])}, "
                    f"bytes {dict(after['usage'])}",
                )
            )

    def _notable(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for worker in self.cluster.all_workers():
            for entry in worker.logs():
                if entry.get("event") in NOTABLE:
                    counts[str(entry["event"])] += 1
        return counts


def shape(program: Program) -> str:
    return describe(program["ops"])
