"""A workload for the managed-Redis tests: runs of ``tests.apps.managed`` (steps, sleeps, waits matched
by events), sent through stepq's client and checked to the last value once they end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.exceptions import RedisError

import stepq
from stepq.runtime.connection import RedisClient
from stepq.runtime.queries import get_run
from tests.apps.managed import expected
from tests.helpers import STEPQ_CLI, WorkerProcess, run_statuses, start_runs

CHAIN = "chain"
WAITER = "waiter"


class ManagedWorker(WorkerProcess):
    """``stepq worker tests.apps.managed:client`` with the given environment, and ``--redis-url``
    only when ``url`` is given (else the worker finds Redis through its environment)."""

    def __init__(
        self, index: int, directory: Path, env: dict[str, str], url: str | None = None, concurrency: int = 20
    ) -> None:
        self.app = "managed"
        argv = [*STEPQ_CLI, "worker", "tests.apps.managed:client", "--concurrency", str(concurrency)]
        if url is not None:
            argv += ["--redis-url", url]
        base = {k: v for k, v in os.environ.items() if not k.startswith("STEPQ_REDIS")}
        full_env = {**base, "STEPQ_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1", **env}
        super(WorkerProcess, self).__init__(f"worker-managed-{index}", argv, directory, full_env)

    def logged(self, event: str) -> list[dict[str, object]]:
        return [entry for entry in self.logs() if entry.get("event") == event]


class Workload:
    """``chains`` runs of ``chain`` and ``waits`` runs of ``waiter``, sent by ``sender``."""

    def __init__(
        self,
        sender: stepq.Client,
        reader: RedisClient,
        *,
        chains: int,
        waits: int,
        pause_s: float = 0.0,
        log: Path | None = None,
    ) -> None:
        self.sender = sender
        self.reader = reader
        self.chains = chains
        self.waits = waits
        self.pause_s = pause_s
        self.log = log
        self.chain_runs: dict[str, int] = {}
        self.wait_runs: dict[str, str] = {}

    async def start(self) -> None:
        extra = {"log": str(self.log)} if self.log else {}
        events = [
            stepq.Event(name="test/managed.chain", data={"n": n, "pause_s": self.pause_s, **extra})
            for n in range(self.chains)
        ]
        ids = await start_runs(self.sender, self.reader, CHAIN, events)
        self.chain_runs = dict(zip(ids, range(self.chains), strict=True))
        keys = [f"k{i}" for i in range(self.waits)]
        waits = [stepq.Event(name="test/managed.wait", data={"key": key}) for key in keys]
        ids = await start_runs(self.sender, self.reader, WAITER, waits) if waits else []
        self.wait_runs = dict(zip(ids, keys, strict=True))

    async def finish(self, timeout: float = 90.0, during: Callable[[], Awaitable[None]] | None = None) -> float:
        """Reply to the waiters until every run has ended (a reply sent before its wait is set up
        matches nothing, so replies repeat); ``during`` is awaited between rounds. Returns the seconds
        it took. Sending may fail for a moment while Redis fails over: that is retried."""
        began = time.monotonic()
        deadline = began + timeout
        run_ids = [*self.chain_runs, *self.wait_runs]
        while True:
            statuses = await _statuses(self.reader, run_ids)
            if all(s in ("completed", "failed", "cancelled") for s in statuses.values()):
                return time.monotonic() - began
            assert time.monotonic() < deadline, f"runs not ended within {timeout} s: {_count(statuses)}"
            waiting = [key for run_id, key in self.wait_runs.items() if statuses.get(run_id) not in ("completed",)]
            if waiting:
                with contextlib.suppress(stepq.StepqError):
                    await self.sender.send(
                        [stepq.Event(name="test/managed.reply", data={"key": k, "value": k.upper()}) for k in waiting]
                    )
            if during is not None:
                await during()
            await asyncio.sleep(0.3)

    def repeated_steps(self) -> int:
        """Step executions beyond one per step (from ``log``)."""
        assert self.log is not None
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return len(lines) - len(set(lines))

    async def check(self) -> None:
        """Every run completed with the values its input gives."""
        for run_id, n in self.chain_runs.items():
            view = await get_run(self.reader, run_id)
            assert view is not None and view.status == "completed", (run_id, view)
            assert view.output == {"n": n, "values": expected(n)}, view.output
        for run_id, key in self.wait_runs.items():
            view = await get_run(self.reader, run_id)
            assert view is not None and view.status == "completed", (run_id, view)
            assert view.output == {"key": key, "reply": key.upper()}, view.output


async def _statuses(reader: RedisClient, run_ids: list[str]) -> dict[str, str]:
    while True:
        try:
            return await run_statuses(reader, run_ids)
        except (RedisError, OSError):  # the reader rides out a failover too
            await asyncio.sleep(0.2)


def _count(statuses: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for status in statuses.values():
        out[status] = out.get(status, 0) + 1
    return out
