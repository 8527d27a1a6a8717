"""The peers workflow on raw arq (not durable: no step results are kept), and its submitter.

A run is a chain of jobs: each records its time in the list it was handed and enqueues the next
with that list (``_defer_by`` for the sleep); the last one records the run. The worker has the
settings of ``bench/arq_worker.py``, which are stepq's (5 ms poll, 100 jobs, msgpack, ``keep_result=0``).

    python -m bench.peers.arq_app --redis-url redis://127.0.0.1:PORT/0
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from arq.connections import ArqRedis

from bench.arq_worker import arq_pool, baseline_worker
from bench.common import CONCURRENCY, POLL_DELAY_S
from bench.peers.marks import apush, now

QUEUE = "bench:peers:arq"


def pool(redis_url: str) -> ArqRedis:
    return arq_pool(redis_url, QUEUE)


async def peer(ctx: dict[str, Any], data: dict[str, Any], stamps: list[float]) -> None:
    """One step of a run: its time, then the next step's job (or the run's record)."""
    stamps = [*stamps, now()]
    if len(stamps) < int(data["n"]):
        sleep = float(data.get("sleep") or 0) if len(stamps) == 1 else 0
        await ctx["redis"].enqueue_job("peer", data, stamps, _defer_by=sleep or None)
    else:
        await apush(data, stamps)


class Submitter:
    """Enqueues each run's first job with ``enqueue_job``."""

    def __init__(self) -> None:
        self.redis = pool(os.environ["STEPQ_REDIS_URL"])

    async def submit(self, runs: Sequence[dict[str, Any]]) -> None:
        for run in runs:
            await self.redis.enqueue_job("peer", dict(run), [])

    async def aclose(self) -> None:
        await self.redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--max-jobs", type=int, default=CONCURRENCY)
    args = parser.parse_args()

    async def on_startup(ctx: dict[str, Any]) -> None:
        print(f"arq-peer ready pid={os.getpid()}", flush=True)

    redis = pool(args.redis_url)
    worker = baseline_worker(
        {"peer": peer}, redis, on_startup, queue=QUEUE, max_jobs=args.max_jobs, poll_delay=POLL_DELAY_S
    )
    worker.run()


if __name__ == "__main__":
    main()
