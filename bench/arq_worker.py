"""The raw arq baseline: an arq worker configured as a stepq worker is, running no-op jobs.

Same poll delay, ``max_jobs``, ``queue_read_limit``, msgpack serializer, ``keep_result=0``, job
timeout and health-check interval as ``stepq.workers.worker.build_worker``; no stepq code at all.
Jobs record their marks with one RPUSH, as the stepq benchmark functions do.

    python -m bench.arq_worker --redis-url redis://127.0.0.1:PORT/0 [--poll-delay 0.005] [--max-jobs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any

import msgpack
from arq.connections import ArqRedis
from arq.typing import StartupShutdown, WorkerCoroutine
from arq.worker import Worker, func
from redis.asyncio import ConnectionPool, Redis

from bench.common import ARQ_QUEUE, CONCURRENCY, MARKS_ENV, POLL_DELAY_S

#: stepq's default step timeout: arq's in-progress lock lives this + 10 s.
JOB_TIMEOUT_S = 2 * 3600


def _deserialize(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False)


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def hop(ctx: dict[str, Any], key: str, i: int, last: int, stamp_all: bool) -> None:
    """One link of a chain: record the start (all links, or only the first and last; none without a key),
    then enqueue the next link."""
    if key and (stamp_all or i in (0, last)):
        await ctx["marks"].rpush(key, repr(time.time()))
    if i < last:
        await ctx["redis"].enqueue_job("hop", key, i + 1, last, stamp_all)


async def first(ctx: dict[str, Any], key: str, sent: float) -> None:
    """Record the time since the job was enqueued."""
    await ctx["marks"].rpush(key, repr(time.time() - sent))


async def late(ctx: dict[str, Any], key: str) -> None:
    """Record how late this deferred job started (``score`` is its due time in ms)."""
    await ctx["marks"].rpush(key, repr(time.time() - ctx["score"] / 1000))


async def long(ctx: dict[str, Any], key: str, seconds: float) -> None:
    await ctx["marks"].rpush(key, f"{os.getpid()} {time.time()!r}")
    await asyncio.sleep(seconds)


def arq_pool(redis_url: str, queue: str) -> ArqRedis:
    """An arq client with stepq's job format (msgpack) on ``queue``."""
    return ArqRedis(
        connection_pool=ConnectionPool.from_url(redis_url),
        job_serializer=msgpack.packb,
        job_deserializer=_deserialize,
        default_queue_name=queue,
    )


def baseline_worker(
    functions: Mapping[str, WorkerCoroutine],
    pool: ArqRedis,
    on_startup: StartupShutdown,
    *,
    queue: str,
    max_jobs: int,
    poll_delay: float,
) -> Worker:
    """A raw arq worker with stepq's settings (see the module's docstring): the baseline's and the
    peers benchmark's arq alike."""
    return Worker(
        functions=[func(f, name=name, timeout=JOB_TIMEOUT_S, max_tries=10**9) for name, f in functions.items()],
        queue_name=queue,
        redis_pool=pool,
        on_startup=on_startup,
        max_jobs=max_jobs,
        queue_read_limit=max(1000, max_jobs * 10),
        poll_delay=poll_delay,
        keep_result=0,
        job_serializer=msgpack.packb,
        job_deserializer=_deserialize,
        handle_signals=True,
        health_check_interval=30,
        log_results=False,
    )


def build(redis_url: str, poll_delay: float, max_jobs: int, queue: str) -> Worker:
    pool = arq_pool(redis_url, queue)

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["marks"] = Redis.from_url(os.environ[MARKS_ENV])
        await pool.ping()
        print(f"arq-baseline ready pid={os.getpid()}", flush=True)

    jobs: dict[str, WorkerCoroutine] = {f.__name__: f for f in (noop, hop, first, late, long)}
    return baseline_worker(jobs, pool, on_startup, queue=queue, max_jobs=max_jobs, poll_delay=poll_delay)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--poll-delay", type=float, default=POLL_DELAY_S)
    parser.add_argument("--max-jobs", type=int, default=CONCURRENCY)
    parser.add_argument("--queue", default=ARQ_QUEUE)
    args = parser.parse_args()
    build(args.redis_url, args.poll_delay, args.max_jobs, args.queue).run()


if __name__ == "__main__":
    main()
