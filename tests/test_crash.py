"""Worker crashes, long steps and draining: a step's job outlives the worker that ran it.

- SIGKILL mid-step: another worker re-runs the step within 15 s, whatever the step timeout.
- A step longer than the lease finishes on its first worker and never runs twice.
- SIGTERM drains: a running step finishes and the worker exits 0; past the grace, the job is handed
  back and another worker takes it without waiting for the lease.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

import stepq
from stepq.runtime.codec import unpack
from tests.helpers import StartWorkers, WorkerProcess, read_lines, run_memo, run_stack, sha1, start_run, wait_for_run

#: The requirement (BRIEF §4): a SIGKILLed worker's step starts again elsewhere within 15 s.
RECOVERY_BOUND_S = 15.0
SLOW, AFTER = sha1("slow"), sha1("after")


@dataclasses.dataclass(frozen=True)
class Mark:
    what: str
    pid: int
    at: float
    token: str


def marks(log: Path, what: str | None = None) -> list[Mark]:
    out = []
    for line in read_lines(log):
        kind, pid, at, token = line.split()
        if what is None or kind == what:
            out.append(Mark(kind, int(pid), float(at), token))
    return out


async def wait_for_marks(log: Path, what: str, count: int, timeout: float, workers: list[WorkerProcess]) -> list[Mark]:
    """Wait until ``count`` ``what`` marks are in ``log``; fail early if every worker died."""
    deadline = time.monotonic() + timeout
    while True:
        found = marks(log, what)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} {what!r} marks in {log} after {timeout} s, expected {count}")
        if not any(w.alive() for w in workers):
            raise AssertionError(f"every worker exited: {[w.stderr()[-2000:] for w in workers]}")
        await asyncio.sleep(0.005)


def worker_with_pid(workers: list[WorkerProcess], pid: int) -> WorkerProcess:
    [worker] = [w for w in workers if w.pid == pid]
    return worker


async def committed(redis: Redis, run_id: str) -> dict[str, Any]:
    """The run's memo, decoded."""
    return {key: unpack(value) for key, value in (await run_memo(redis, run_id)).items()}


async def wait_exit(worker: WorkerProcess, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while worker.alive():
        assert time.monotonic() < deadline, f"worker {worker.pid} still running {timeout} s after SIGTERM"
        await asyncio.sleep(0.02)
    return worker.proc.returncode


async def test_sigkilled_workers_step_runs_again_elsewhere_within_15_s(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    # Default lease (10 s); a step timeout of an hour, which arq alone would turn into a 1 h lock.
    workers = start_workers("crash", n=2, env={"STEPQ_STEP_TIMEOUT": "3600"})
    log = tmp_path / "slow.log"
    run_id = await start_run(sender, redis, "slow-async", "test/slow.async", {"log": str(log), "first_s": 30})

    [first] = await wait_for_marks(log, "start", 1, timeout=15, workers=workers)
    victim = worker_with_pid(workers, first.pid)
    [survivor] = [w for w in workers if w is not victim]
    victim.proc.kill()
    killed = time.time()
    victim.proc.wait(timeout=10)

    _, again = await wait_for_marks(log, "start", 2, timeout=60, workers=[survivor])
    recovery_s = again.at - killed
    print(f"SIGKILL -> step started again in pid {again.pid} after {recovery_s:.2f} s")
    assert again.pid == survivor.pid
    assert recovery_s <= RECOVERY_BOUND_S, f"step re-ran {recovery_s:.2f} s after the kill"

    done = await wait_for_run(redis, run_id, timeout=30)
    assert done.status == "completed", done.error
    assert done.output["slow"] == {"token": again.token, "pid": survivor.pid}
    # One result for the step, the re-run's: the killed execution committed nothing.
    assert await run_stack(redis, run_id) == [SLOW, AFTER]
    memo = await committed(redis, run_id)
    assert set(memo) == {SLOW, AFTER}
    assert memo[SLOW] == {"data": {"token": again.token, "pid": survivor.pid}}
    assert [m.pid for m in marks(log, "end")] == [survivor.pid]
    assert len(marks(log, "start")) == 2


async def test_steps_longer_than_the_lease_finish_on_their_first_worker_and_run_once(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """25 s steps under a 10 s lease: an awaiting coroutine, a blocking def in a thread, and a
    plain-def function; a second worker polls beside the first the whole time."""
    step_s = 25.0
    env = {"STEPQ_LEASE": "10", "STEPQ_STEP_TIMEOUT": "3600"}
    [first] = start_workers("crash", n=1, env=env)
    runs: dict[str, tuple[str, Path]] = {}
    for function, event in [
        ("slow-async", "test/slow.async"),
        ("slow-thread", "test/slow.thread"),
        ("slow-sync-fn", "test/slow.sync-fn"),
    ]:
        log = tmp_path / f"{function}.log"
        run_id = await start_run(sender, redis, function, event, {"log": str(log), "first_s": step_s})
        runs[function] = (run_id, log)
    for _, log in runs.values():
        await wait_for_marks(log, "start", 1, timeout=15, workers=[first])
    # The second worker comes up once every long step runs on the first: it is idle, and would
    # take any of their jobs whose lease lapsed.
    [second] = start_workers("crash", n=1, env=env)

    for function, (run_id, log) in runs.items():
        done = await wait_for_run(redis, run_id, timeout=step_s + 30)
        assert done.status == "completed", (function, done.error)
        [start] = marks(log, "start")
        [end] = marks(log, "end")
        assert start.pid == end.pid == first.pid, (function, start, end)
        assert end.token == start.token
        assert end.at - start.at >= step_s, (function, "the step did not outlive the lease", end.at - start.at)
        assert done.output["slow"] == {"token": start.token, "pid": first.pid}
        assert await run_stack(redis, run_id) == [SLOW, AFTER]
        assert (await committed(redis, run_id))[SLOW] == {"data": {"token": start.token, "pid": first.pid}}
    assert first.alive() and second.alive()
    lost = [e for e in first.logs() if e.get("event") == "lease.lost"]
    assert lost == [], lost


async def test_sigterm_lets_the_running_step_finish_and_the_worker_exit_0(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    workers = start_workers("crash", n=2)
    log = tmp_path / "slow.log"
    run_id = await start_run(sender, redis, "slow-async", "test/slow.async", {"log": str(log), "first_s": 3})

    [start] = await wait_for_marks(log, "start", 1, timeout=15, workers=workers)
    draining = worker_with_pid(workers, start.pid)
    draining.proc.send_signal(signal.SIGTERM)

    assert await wait_exit(draining, timeout=30) == 0, draining.stderr()[-3000:]
    [end] = marks(log, "end")
    assert end.pid == draining.pid and end.token == start.token
    assert end.at - start.at >= 3.0
    done = await wait_for_run(redis, run_id, timeout=30)
    assert done.status == "completed", done.error
    # The drained step's own result was committed; nothing ran it again.
    assert done.output["slow"] == {"token": start.token, "pid": draining.pid}
    assert len(marks(log, "start")) == 1
    assert await run_stack(redis, run_id) == [SLOW, AFTER]
    assert (await committed(redis, run_id))[SLOW] == {"data": {"token": start.token, "pid": draining.pid}}


async def test_a_drain_past_its_grace_hands_the_job_back_to_another_worker(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    # A 60 s lease: if the job were not handed back, no other worker could take it for a minute,
    # longer than this test waits for the run.
    env = {"STEPQ_DRAIN_GRACE": "1", "STEPQ_LEASE": "60"}
    workers = start_workers("crash", n=2, env=env)
    log = tmp_path / "slow.log"
    run_id = await start_run(sender, redis, "slow-async", "test/slow.async", {"log": str(log), "first_s": 20})

    [start] = await wait_for_marks(log, "start", 1, timeout=15, workers=workers)
    draining = worker_with_pid(workers, start.pid)
    [other] = [w for w in workers if w is not draining]
    draining.proc.send_signal(signal.SIGTERM)
    signalled = time.time()

    code = await wait_exit(draining, timeout=30)
    _, again = await wait_for_marks(log, "start", 2, timeout=30, workers=[other])
    print(f"SIGTERM -> handed back -> step started again in the other worker after {again.at - signalled:.2f} s")
    assert again.pid == other.pid
    done = await wait_for_run(redis, run_id, timeout=30)
    assert done.status == "completed", done.error
    assert done.output["slow"] == {"token": again.token, "pid": other.pid}
    # The cancelled execution never finished, and only the re-run's result was committed.
    assert [m.token for m in marks(log, "end")] == [again.token]
    assert await run_stack(redis, run_id) == [SLOW, AFTER]
    assert (await committed(redis, run_id))[SLOW] == {"data": {"token": again.token, "pid": other.pid}}
    assert code == 0, draining.stderr()[-3000:]


async def test_a_second_sigint_hands_the_running_step_back_at_once(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers, tmp_path: Path
) -> None:
    # The default 30 s grace and a 60 s lease: only the forced hand-back lets the other worker run
    # the step within this test's waits.
    workers = start_workers("crash", n=2, env={"STEPQ_LEASE": "60"})
    log = tmp_path / "slow.log"
    run_id = await start_run(sender, redis, "slow-async", "test/slow.async", {"log": str(log), "first_s": 20})

    [start] = await wait_for_marks(log, "start", 1, timeout=15, workers=workers)
    forced = worker_with_pid(workers, start.pid)
    [other] = [w for w in workers if w is not forced]
    forced.proc.send_signal(signal.SIGINT)  # drain...
    await asyncio.sleep(0.5)
    forced.proc.send_signal(signal.SIGINT)  # ...then force

    assert await wait_exit(forced, timeout=15) == 0, forced.stderr()[-3000:]
    assert any(e.get("event") == "worker.forced" for e in forced.logs())
    _, again = await wait_for_marks(log, "start", 2, timeout=15, workers=[other])
    assert again.pid == other.pid
    done = await wait_for_run(redis, run_id, timeout=30)
    assert done.status == "completed", done.error
    # The forced execution never finished; the other worker's result is the one committed.
    assert [m.token for m in marks(log, "end")] == [again.token]
    assert done.output["slow"] == {"token": again.token, "pid": other.pid}
