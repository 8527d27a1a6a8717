"""The fault injector: SIGKILLs and replaces workers, pauses one past its lease, restarts Redis.

It runs beside the driver. Its choices (which worker) come from its own seeded random stream; its
timing follows the plan. A worker that dies without being killed is a failure of its own (a worker
must never die of bad data or a Redis error): it is recorded with its log and replaced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import time

from tests.torture.cluster import Cluster, Worker


@dataclasses.dataclass(frozen=True, slots=True)
class FaultPlan:
    """When faults happen, in seconds from the start of the workload."""

    kill_every_s: float = 4.0
    #: Pauses (SIGSTOP, then SIGCONT after ``pause_s``) start at these times.
    pauses_at_s: tuple[float, ...] = (12.0,)
    #: Longer than the lease: the paused worker's steps are taken over, and its late writes fenced.
    pause_s: float = 5.0
    #: Redis restarts at these times.
    restarts_at_s: tuple[float, ...] = (25.0,)
    #: Restart Redis with SIGKILL (after ``appendfsync always``) rather than SIGTERM.
    hard_restarts: bool = False
    #: SIGKILL the worker running a step whose op says ``kill`` (see ``program``).
    targeted_kills: bool = True
    #: At most one kill (scheduled or targeted) per this many seconds: each replacement worker costs
    #: a second or two of CPU, and more would turn the test into an overload test on two cores.
    min_kill_gap_s: float = 2.0

    @classmethod
    def repeating(
        cls,
        minutes: float,
        *,
        kill_every_s: float = 4.0,
        pause_every_s: float = 60.0,
        restart_every_s: float = 150.0,
        hard: bool = False,
    ) -> FaultPlan:
        """A plan for a long run: pauses and restarts over and over."""
        span = minutes * 60
        return cls(
            kill_every_s=kill_every_s,
            pauses_at_s=tuple(x * pause_every_s + 12.0 for x in range(int(span // pause_every_s) + 1)),
            restarts_at_s=tuple(x * restart_every_s + 25.0 for x in range(int(span // restart_every_s) + 1)),
            hard_restarts=hard,
        )


@dataclasses.dataclass(slots=True)
class FaultLog:
    kills: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    pauses: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    restarts: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    #: Workers that died on their own: (time, name, the tail of their log).
    deaths: list[tuple[float, str, str]] = dataclasses.field(default_factory=list)
    #: Every fault with its wall-clock time (seconds since the epoch), to set beside a run's log.
    timeline: list[tuple[float, str]] = dataclasses.field(default_factory=list)

    def note(self, what: str) -> None:
        self.timeline.append((time.time(), what))

    def around(self, begin: float, end: float) -> list[str]:
        """The faults between two wall-clock times, as ``HH:MM:SS.mmm what``."""
        return [f"{_clock(at)} {what}" for at, what in self.timeline if begin <= at <= end]

    def summary(self) -> str:
        return f"{len(self.kills)} SIGKILLs, {len(self.pauses)} pauses, {len(self.restarts)} Redis restarts" + (
            f", {len(self.deaths)} workers died on their own" if self.deaths else ""
        )


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}"


class Faults:
    def __init__(self, cluster: Cluster, seed: int, plan: FaultPlan) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.plan = plan
        self.log = FaultLog()
        self._began = time.monotonic()
        self._last_kill = -1e9

    def _at(self) -> float:
        return round(time.monotonic() - self._began, 1)

    async def run(self, until_s: float, stop: asyncio.Event) -> None:
        """Inject faults until ``until_s`` from now or ``stop``; keeps the fleet at full size."""
        self._began = time.monotonic()
        pauses = list(self.plan.pauses_at_s)
        restarts = list(self.plan.restarts_at_s)
        next_kill = self.plan.kill_every_s
        tasks: list[asyncio.Task[None]] = []
        try:
            while not stop.is_set():
                now = time.monotonic() - self._began
                if now >= until_s:
                    break
                self.reap()
                if now >= next_kill:
                    next_kill += self.plan.kill_every_s
                    self.kill_one()
                if pauses and now >= pauses[0]:
                    pauses.pop(0)
                    tasks.append(asyncio.create_task(self.pause_one()))
                if restarts and now >= restarts[0]:
                    restarts.pop(0)
                    await self.restart_redis()
                await asyncio.sleep(0.1)
        finally:
            await asyncio.gather(*tasks)

    def reap(self) -> None:
        """Record and replace workers that exited without being killed."""
        for worker in list(self.cluster.workers):
            if not worker.alive() and not worker.killed:
                self.log.deaths.append((self._at(), worker.name, worker.stderr()[-4000:]))
                self.log.note(f"{worker.name} died on its own")
                self.cluster.retire(worker)
                self.cluster.add_worker(http=worker.http)

    def kill_one(self) -> Worker | None:
        ready = [w for w in self.cluster.workers if w.alive() and not w.paused and w.started()]
        if not ready:
            return None
        victim = self.rng.choice(ready)
        return victim if self.kill(victim) else None

    def kill(self, victim: Worker, why: str = "") -> bool:
        """SIGKILL a worker and start its replacement (not waited for: faults come on schedule).
        False (and no kill) within ``min_kill_gap_s`` of the last one."""
        if time.monotonic() - self._last_kill < self.plan.min_kill_gap_s:
            return False
        self._last_kill = time.monotonic()
        victim.killed = True
        victim.proc.kill()
        victim.proc.wait(timeout=10)
        self.log.kills.append((self._at(), victim.name))
        self.log.note(f"SIGKILL {victim.name}{f' ({why})' if why else ''}")
        self.cluster.retire(victim)
        self.cluster.add_worker(http=victim.http)
        return True

    def worker_running(self, os_pid: int, http: bool) -> Worker | None:
        """The worker that runs a step whose handler ran in process ``os_pid``: that worker, or for a
        function served over HTTP (its handler runs in the app) a live HTTP worker."""
        for worker in self.cluster.workers:
            if worker.alive() and not worker.killed and (worker.http if http else worker.pid == os_pid):
                return worker
        return None

    async def pause_one(self) -> None:
        ready = [w for w in self.cluster.workers if w.alive() and not w.paused and w.started() and not w.http]
        if not ready:
            return
        victim = self.rng.choice(ready)
        victim.paused = True
        os.kill(victim.pid, signal.SIGSTOP)
        self.log.pauses.append((self._at(), victim.name))
        self.log.note(f"SIGSTOP {victim.name}")
        try:
            await asyncio.sleep(self.plan.pause_s)
        finally:
            if victim.alive():
                os.kill(victim.pid, signal.SIGCONT)
            victim.paused = False
            self.log.note(f"SIGCONT {victim.name}")

    async def restart_redis(self) -> None:
        if self.cluster.settings.redis_cluster:  # a cluster's "restart": a master fails over
            began = time.monotonic()
            self.log.note("a Redis master fails over")
            what = self.cluster.fail_over(self.rng.randrange(1000))
            self.log.restarts.append((self._at(), f"{what}, in {time.monotonic() - began:.1f} s"))
            self.log.note(f"failover done: {what}")
            return
        how = "SIGKILL after appendfsync always" if self.plan.hard_restarts else "SIGTERM"
        began = time.monotonic()
        self.log.note(f"Redis stops ({how})")
        # In the main thread (the driver waits a second or two): the new Redis then dies with this
        # process however it ends, which Linux ties to the thread that started it.
        if self.plan.hard_restarts:
            self.cluster.kill_redis_hard()
        else:
            self.cluster.restart_redis()
        self.log.restarts.append((self._at(), f"{how}, down {time.monotonic() - began:.1f} s"))
        self.log.note("Redis is back")
