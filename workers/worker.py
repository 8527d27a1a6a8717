"""The arq worker that runs stepq jobs for one app."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import msgpack
import structlog
from arq.connections import ArqRedis
from arq.worker import Worker, func

from runtime import keys
from runtime.connection import make_pool
from runtime.jobs import ADVANCE
from runtime.limits import Limits
from runtime.registry import Registry
from runtime.store import RunStore
from sdk.client import Client
from workers.executor import Executor
from workers.invoker import InProcessInvoker, Invoker

log = structlog.get_logger("stepq.worker")


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker process runs; each has an environment variable for containers."""

    #: Jobs (step invocations) run at once by this process.
    concurrency: int = 100
    #: arq polls the queue this often; arq's 0.5 s default would put half a second between steps.
    poll_delay_s: float = 0.005
    #: How long one invocation (one step) may run.
    step_timeout_s: float = 2 * 3600

    @classmethod
    def from_env(cls, **overrides: Any) -> WorkerOptions:
        base = cls()
        values = {
            "concurrency": int(os.environ.get("STEPQ_CONCURRENCY", base.concurrency)),
            "poll_delay_s": float(os.environ.get("STEPQ_POLL_DELAY", base.poll_delay_s)),
            "step_timeout_s": float(os.environ.get("STEPQ_STEP_TIMEOUT", base.step_timeout_s)),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        options = cls(**values)
        if options.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {options.concurrency}")
        if options.poll_delay_s <= 0:
            raise ValueError(f"poll delay must be positive, got {options.poll_delay_s}")
        return options


def _deserialize(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False)


def build_worker(
    client: Client,
    redis_url: str,
    options: WorkerOptions | None = None,
    *,
    limits: Limits | None = None,
    invoker: Invoker | None = None,
    handle_signals: bool = True,
) -> Worker:
    """An arq Worker serving ``client``'s functions from the app's queue."""
    options = options or WorkerOptions.from_env()
    pool = ArqRedis(
        connection_pool=make_pool(redis_url),
        job_serializer=msgpack.packb,
        job_deserializer=_deserialize,
        default_queue_name=keys.queue(client.app_id),
    )
    store = RunStore(pool, limits or Limits.from_env())
    functions = {fn.slug: fn for fn in client.functions.values()}
    executor = Executor(functions, store, invoker or InProcessInvoker())

    async def on_startup(ctx: dict[str, Any]) -> None:
        count = await Registry(pool, store.scripts).register_app(
            client.app_id, [fn.config() for fn in functions.values()]
        )
        log.info("worker.started", app=client.app_id, functions=count, redis=_redact(redis_url))

    return Worker(
        functions=[func(executor.advance, name=ADVANCE, timeout=options.step_timeout_s, max_tries=10**9)],
        queue_name=keys.queue(client.app_id),
        redis_pool=pool,
        on_startup=on_startup,
        max_jobs=options.concurrency,
        # Every worker reads from the head of the queue; a read limit below the fleet's slots would
        # cap the whole fleet (arq-internals B.7), so read generously.
        queue_read_limit=max(1000, options.concurrency * 10),
        poll_delay=options.poll_delay_s,
        keep_result=0,
        job_serializer=msgpack.packb,
        job_deserializer=_deserialize,
        handle_signals=handle_signals,
        log_results=False,
    )


def _redact(url: str) -> str:
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


