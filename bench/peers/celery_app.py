"""The peers workflow on Celery 5 (Redis broker and result backend; steps not durable), and its submitter.

A run is a chain of tasks linked with ``peer.s()``: each gets the timestamps of the steps before it
as its first argument (Celery passes a link's result to the next) and returns them with its own; the
last one records the run. The sleep is a ``countdown`` on the second link (held in the worker's
memory, as Celery does). Runs in the peers' venv (Celery needs redis-py >= 6.4, stepq pins < 6):

    celery -A bench.peers.celery_app worker --pool prefork --concurrency 1
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import celery  # type: ignore[import-not-found, unused-ignore]

from bench.peers.marks import now, push

app: Any = celery.Celery("bench_peers", broker=os.environ["STEPQ_REDIS_URL"], backend=os.environ["STEPQ_REDIS_URL"])
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])


def _peer(stamps: list[float], data: dict[str, Any]) -> list[float]:
    """One step of a run: the timestamps so far, with this step's."""
    stamps = [*stamps, now()]
    if len(stamps) == int(data["n"]):
        push(data, stamps)
    return stamps


peer: Any = app.task(name="peer")(_peer)


def chain_of(data: dict[str, Any]) -> Any:
    """The run as a Celery chain of ``n`` links."""
    links = [peer.s([], data)]
    for i in range(1, int(data["n"])):
        link = peer.s(data)
        if i == 1 and float(data.get("sleep") or 0) > 0:
            link = link.set(countdown=float(data["sleep"]))
        links.append(link)
    return celery.chain(*links)


class Submitter:
    """Sends each run's chain with ``apply_async`` (a blocking call: the driver has nothing else to do)."""

    async def submit(self, runs: Sequence[dict[str, Any]]) -> None:
        for run in runs:
            chain_of(dict(run)).apply_async()

    async def aclose(self) -> None:
        app.close()
