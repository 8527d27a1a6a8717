"""Submit one workload's runs to one system and wait until every run has recorded itself.

Runs in the system's venv (stepq's for stepq and arq, the peers' for the others), started by the
orchestrator as a process with a time limit; the figures are computed by the orchestrator from the
records in the marks database, the same way for every system.

    python -m bench.peers.drive --system NAME --workload w1|w2|w3|w4|w5 --runs N --steps N --key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any, Protocol

import redis.asyncio

from bench.peers.env import MARKS_ENV

SYSTEMS = ("stepq", "arq", "celery", "dbos", "restate")


class Submitter(Protocol):
    async def submit(self, runs: Sequence[dict[str, Any]]) -> None: ...

    async def aclose(self) -> None: ...


class Timeout(Exception):
    pass


async def _wait(marks: redis.asyncio.Redis, key: str, count: int, deadline: float) -> None:
    while int(await marks.llen(key)) < count:  # type: ignore[misc]
        if time.monotonic() > deadline:
            have = int(await marks.llen(key))  # type: ignore[misc]
            raise Timeout(f"{have} of {count} runs recorded under {key!r} in the time allowed")
        await asyncio.sleep(0.005)


async def drive(args: argparse.Namespace) -> None:
    module = importlib.import_module(f"bench.peers.{args.system}_app")
    submitter: Submitter = module.Submitter()
    marks = redis.asyncio.Redis.from_url(os.environ[MARKS_ENV])
    deadline = time.monotonic() + args.timeout
    rng = random.Random(args.seed)
    low, high = (float(x) / 1000 for x in args.gap_ms.split(","))
    run: dict[str, Any] = {"key": args.key, "n": args.steps, "sleep": args.sleep}
    try:
        if args.workload in ("w1", "w5"):  # one run at a time on an idle worker
            for i in range(args.runs):
                await submitter.submit([run])
                await _wait(marks, args.key, i + 1, deadline)
        elif args.workload == "w2":  # every run at once
            began = sent = time.time()
            submit_at = getattr(submitter, "submit_at", None)
            if submit_at is not None:
                sent = await submit_at([run] * args.runs)
            else:
                await submitter.submit([run] * args.runs)
            # When the clock starts, when submission began and when it ended.
            await marks.rpush(f"{args.key}:sent", repr(sent), repr(began), repr(time.time()))
        else:  # spaced starts, each carrying its send time
            for _ in range(args.runs):
                await submitter.submit([{**run, "sent": time.time()}])
                await asyncio.sleep(rng.uniform(low, high) + rng.uniform(0, args.extra_gap_s))
        await _wait(marks, args.key, args.runs, deadline)
    finally:
        await submitter.aclose()
        await marks.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", required=True, choices=SYSTEMS)
    parser.add_argument("--workload", required=True, choices=("w1", "w2", "w3", "w4", "w5"))
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True, help="steps per run")
    parser.add_argument("--key", required=True, help="the marks list the runs record into")
    parser.add_argument("--sleep", type=float, default=0.0, help="a durable sleep after the first step (s)")
    parser.add_argument("--gap-ms", default="20,40", help="random gap between spaced starts (ms), LOW,HIGH")
    parser.add_argument("--extra-gap-s", type=float, default=0.0, help="an extra random 0..X s between starts")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    try:
        asyncio.run(drive(args))
    except Timeout as exc:
        print(f"driver: {exc}", file=sys.stderr, flush=True)
        sys.exit(3)
    print("driver done", flush=True)


if __name__ == "__main__":
    main()
