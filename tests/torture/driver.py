"""The torture driver: sends a few hundred generated programs to a faulty cluster, plays the part of
the outside world (events the waits expect, cancellations), snapshots every run as it ends, then
checks every invariant and the cluster's leftovers.

``Torture(config, directory).run()`` returns a ``Report``; its ``failure_message()`` names the seed,
the command that reproduces the run, and each violation with the run, its program and what differs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from pathlib import Path

from redis.asyncio import Redis

import stepq
from stepq.runtime import keys, redis_errors, shards
from stepq.runtime.actions import ActionRefused, Actions, Started
from stepq.runtime.codec import unpack
from stepq.runtime.connection import RedisClient, close, connect, open_redis
from stepq.runtime.limits import Limits
from stepq.runtime.transport import RedisTransport
from stepq.runtime.waits import WaitRecord
from tests.torture import memory
from tests.torture.cluster import Cluster, Settings
from tests.torture.faults import FaultPlan, Faults
from tests.torture.interpreter import executions_key
from tests.torture.invariants import Execution, RunSnapshot, Violation, check_run, sha1
from tests.torture.leftovers import diagnose, global_leftovers, jobs_of, run_leftovers
from tests.torture.logs import WorkerLogs
from tests.torture.model import Expected, Model, child_programs, memo_oracle
from tests.torture.program import KNOWN_SHAPES, SIGNAL, Generator, Mix, Op, Program, signal_value, step_id, walk
from tests.torture.report import Report
from tests.torture.slots import SlotAudit

TERMINAL = ("completed", "failed", "cancelled")


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
    #: Follow MONITOR and report every script call whose keys span Redis Cluster slots (``slots.py``).
    audit_slots: bool = False
    #: Once the runs are checked, replay one ended run and resume another from its second step (the
    #: operator actions' fork_run.lua, audited with the rest), and follow each new run a few steps.
    forks: bool = False

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


class Torture:
    def __init__(self, config: Config, directory: Path) -> None:
        self.config = config
        self.directory = directory
        self.cluster = Cluster(directory, config.settings)
        self.report = Report(config.seed, config.command(), directory)
        self.tracks: dict[str, Track] = {}
        self.by_run: dict[str, Track] = {}
        self.rng = random.Random(config.seed ^ 0x5EED)
        self.redis: RedisClient | None = None
        #: The step handlers' execution records (``Cluster.records_url``).
        self.records: Redis | None = None
        self.faults: Faults | None = None
        self.local: stepq.Client | None = None
        self.http: stepq.Client | None = None
        self._seen_done_ms = 0
        self._logs: WorkerLogs | None = None
        #: Runs that never ended: what they hold is not counted again as leftovers.
        self.stranded: set[str] = set()

    def one_redis(self) -> Redis:
        """The one Redis (the memory census reads one server's INFO; it is off on a cluster)."""
        assert isinstance(self.redis, Redis), "the memory check needs one Redis, not a cluster"
        return self.redis

    # -- setup --------------------------------------------------------------------------------------

    def _programs(self) -> list[Program]:
        programs = Generator(self.config.seed, self.config.mix).programs(self.config.runs)
        if self.config.explicit:
            programs = explicit_programs(self.config.explicit, "x")
        elif self.config.known_shapes:
            # spread among the generated ones, so that they meet the faults too
            known = explicit_programs(KNOWN_SHAPES, "k")
            step = max(1, len(programs) // (len(known) + 1))
            for i, program in enumerate(known):
                programs.insert(min(len(programs), (i + 1) * step + i), program)
        if self.config.only:
            wanted = {pid.split("/")[0] for pid in self.config.only}  # a child's program comes with its parent's
            programs = [p for p in programs if p["pid"] in wanted]
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
        audit = SlotAudit(self.cluster.redis.port) if self.config.audit_slots else None
        if audit is not None:
            audit.start()
        self.records = connect(self.cluster.records_url)
        if self.config.settings.redis_cluster:
            self.redis = await open_redis(self.cluster.redis_url)  # (and its 32 shards)
        else:
            self.redis = connect(self.cluster.redis_url)
            shards.configure(self.config.settings.shards)  # as the cluster's processes, opening it
        # The driver's own writes (events, cancellations) follow the cluster's retention too.
        limits = Limits(retention_s=self.config.settings.retention_s)
        self.local = stepq.Client("t-torture-driver", transport=RedisTransport(self.cluster.redis_url, limits))
        self.http = stepq.Client("t-torture-driver-http", event_api_url=self.cluster.api_url, event_key="torture")
        try:
            # (one Redis's census: not on a cluster, whose memory check is off)
            baseline = await memory.census(self.one_redis(), sizes_of_keys=True) if self.config.check_memory else None
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
            if self.config.forks:
                await self._forks()
            if audit is not None:
                audit.stop()
                self.report.script_calls = dict(audit.calls)
                for detail in audit.violations():
                    self.report.violations.append(Violation("one-slot", "-", "-", detail))
            if baseline is not None and not (self.config.only or self.config.explicit or self.stranded):
                await self._memory(baseline)
            elif self.stranded:
                self.report.memory = f"memory not checked: {len(self.stranded)} runs never ended"
        finally:
            if audit is not None:
                audit.stop()
            self.report.elapsed_s = time.monotonic() - began
            self.report.notable = self.logs().counts
            await self.local.aclose()
            await self.http.aclose()
            await close(self.redis)
            await close(self.records)
            await asyncio.to_thread(self.cluster.stop)
            self.report.write()
        return self.report

    # -- sending ------------------------------------------------------------------------------------

    async def _send(self, client: stepq.Client, event: stepq.Event, what: str) -> None:
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
            data = {"pid": track.pid, "ops": program["ops"]}
            event = stepq.Event(name=f"{track.prefix}/run", data=data, id=track.pid)
            track.sent_ms = int(time.time() * 1000)
            await self._send(client, event, f"the event of {track.pid}")

    async def _signal(self, op: Op) -> None:
        assert self.local is not None
        event = stepq.Event(name=SIGNAL, data={"tok": op["tok"], "v": signal_value(op["tok"])})
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
            event = stepq.Event(name=f"{track.prefix}/cancel", data={"pid": track.pid})
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
            except redis_errors.ANY:
                await asyncio.sleep(0.2)  # Redis is restarting, or a master failing over
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
        active, done = [], []
        for shard in shards.shards():
            active += await self.redis.zrange(keys.runs_active(shard), 0, -1)
            done += await self.redis.zrangebyscore(
                keys.runs_done(shard), self._seen_done_ms - 5000, "+inf", withscores=True
            )
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
                assert self.records is not None
                entries: list[bytes] = await self.records.lrange(executions_key(track.pid), 0, -1)  # type: ignore[misc]
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
        assert self.records is not None
        entries: list[bytes] = await self.records.lrange(executions_key(track.pid), 0, -1)  # type: ignore[misc]
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
            leftovers=run_leftovers(raw, pending, jobs),
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
            jobs = await jobs_of(self.redis, track.run_id)
            pending_keys: set[bytes] = await self.redis.smembers(keys.pending(track.run_id))  # type: ignore[misc]
            stack_keys: list[bytes] = await self.redis.lrange(keys.stack(track.run_id), 0, -1)  # type: ignore[misc]
            pending = [names.get(p.decode(), p.decode()) for p in pending_keys]
            stack = [names.get(k.decode(), k.decode()) for k in stack_keys]
            logs = self.logs().lines(track.run_id)
            children = [self.tracks.get(f"{track.pid}/{p}") for p in pending if p.startswith("i")]
            stuck_children = any(c is not None and c.run_id is not None and not c.ended for c in children)
            missing_children = any(c is not None and c.run_id is None for c in children)
            # a timeout's job outlives its wait or invoke until the run ends: it moves nothing
            done = {k.decode() for k in stack_keys}
            live = [j for j in jobs if not any(f":s{key}:timer" in j for key in done)]
            why = diagnose(raw, names, pending, stack, live, logs, stuck_children, missing_children)
            last = self.logs().last_invocation(track.run_id)
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

    def logs(self) -> WorkerLogs:
        """The workers' logs, read once the runs are over."""
        if self._logs is None:
            self._logs = WorkerLogs(self.cluster.all_workers())
        return self._logs

    # -- the end ------------------------------------------------------------------------------------

    async def _quiesce(self, timeout: float = 20.0) -> None:
        """Wait until no worker runs a job, so every execution is recorded."""
        assert self.redis is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                busy = [k async for k in self.redis.scan_iter(match=keys.ARQ_IN_PROGRESS + "*")]
            except redis_errors.ANY:
                busy = ["?"]
            if not busy:
                return
            await asyncio.sleep(0.2)

    async def _check(self) -> None:
        assert self.records is not None
        ran = [t for t in self.tracks.values() if t.snap is not None]
        async with self.records.pipeline(transaction=False) as pipe:
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
                detail = self.logs().lines(track.run_id)
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
        assert self.redis is not None
        for problem in await global_leftovers(self.redis, self.stranded):
            self.report.violations.append(Violation("leftovers", "-", "-", problem))

    async def _forks(self) -> None:
        """Replay an ended run and resume another from its second committed step; wait until each new
        run has taken a step of its own or ended (its later steps may wait for the driver's signals)."""
        assert self.redis is not None
        actions = Actions.on(self.redis, Limits(retention_s=self.config.settings.retention_s))
        # the runs that ended last: the cluster's retention is short
        ended = [t for t in self.tracks.values() if t.snap is not None and len(t.snap.stack) >= 2]
        ended.sort(key=lambda t: t.snap.ended_ms or 0 if t.snap is not None else 0, reverse=True)
        if len(ended) < 2:
            self.report.violations.append(Violation("fork", "-", "-", f"only {len(ended)} runs to fork"))
            return
        new: list[tuple[Started, int]] = []
        refusals: list[str] = []
        for track in ended:  # the first that can be replayed, then the next that can be resumed
            snap = track.snap
            assert snap is not None
            try:
                if not new:
                    new.append((await actions.replay(snap.run_id), 0))
                else:
                    new.append((await actions.resume(snap.run_id, snap.stack[1]), 1))
                    break
            except ActionRefused as refused:  # expired meanwhile, say
                refusals.append(str(refused))
        if len(new) < 2:
            self.report.violations.append(Violation("fork", "-", "-", f"no replay and resume: {refusals[:3]}"))
        deadline = time.monotonic() + 10
        for started, kept in new:
            while time.monotonic() < deadline:
                status = await self.redis.hget(keys.run(started.run_id), "status")  # type: ignore[misc]
                grew = await self.redis.llen(keys.stack(started.run_id)) > kept  # type: ignore[misc]
                if grew or status in (b"sleeping", b"waiting", b"completed", b"failed", b"cancelled"):
                    break
                await asyncio.sleep(0.1)
            else:
                self.report.violations.append(
                    Violation("fork", "-", started.run_id, f"{started.kind} of {started.source_run_id} took no step")
                )
            self.report.forks.append(started.run_id)

    async def _memory(self, baseline: memory.Census) -> None:
        """After the last run's retention: no run keys, indexes trimmed, memory back near the baseline."""
        assert self.redis is not None and self.local is not None
        ends = [t.snap.ended_ms for t in self.tracks.values() if t.snap is not None and t.snap.ended_ms]
        retention_ms = self.config.settings.retention_s * 1000
        wait_s = (max(ends, default=0) + retention_ms - time.time() * 1000) / 1000 + 2
        await asyncio.sleep(max(0.0, wait_s))
        # A last run trims the indexes (runs and events are trimmed to the retention as new ones come).
        probe = {"pid": "probe", "ops": []}
        self.tracks["probe"] = Track("probe", probe, False, [])
        await self._send(self.local, stepq.Event(name="torture/run", data=probe), "the probe")
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
            after = await memory.census(self.one_redis(), sizes_of_keys=True)
            if after.kinds["run keys"] <= memory.ALLOWED_KEYS["run keys"]:
                break
            await asyncio.sleep(0.2)
        self.report.memory, problems = memory.verdict(baseline, after, self.report.tally.runs)
        self.report.violations += [Violation("memory", "-", "-", problem) for problem in problems]
