"""The peers workflow on DBOS (Postgres; one ``@DBOS.step`` per step), its worker and its submitter.

A sync ``@DBOS.workflow`` with one ``@DBOS.step`` per step and ``DBOS.sleep`` for the sleep, run from
the queue ``perf`` (``DBOS.register_queue``, ``worker_concurrency`` 100, so that one poller does not
take the whole burst); each worker process has its own ``executor_id``. Runs in the peers' venv:

    python -m bench.peers.dbos_app --db postgresql://postgres@127.0.0.1:5432/DB --poll 1.0
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import dbos  # type: ignore[import-not-found, unused-ignore]

from bench.peers.env import DB_ENV
from bench.peers.marks import now, push

QUEUE = "perf"
WORKFLOW = "peer"


def _step() -> float:
    return now()


step: Any = dbos.DBOS.step(name="now")(_step)


def _peer(data: dict[str, Any]) -> None:
    """``n`` steps; with ``sleep`` > 0 a durable sleep after the first."""
    stamps: list[float] = []
    for i in range(int(data["n"])):
        stamps.append(step())
        if i == 0 and float(data.get("sleep") or 0) > 0:
            dbos.DBOS.sleep(float(data["sleep"]))
    push(data, stamps)


peer: Any = dbos.DBOS.workflow(name=WORKFLOW)(_peer)


class Submitter:
    """Enqueues each run with ``DBOSClient.enqueue`` (one INSERT per run)."""

    def __init__(self) -> None:
        self.client: Any = dbos.DBOSClient(system_database_url=os.environ[DB_ENV])

    async def submit(self, runs: Sequence[dict[str, Any]]) -> None:
        for run in runs:
            self.client.enqueue({"queue_name": QUEUE, "workflow_name": WORKFLOW}, dict(run))

    async def aclose(self) -> None:
        self.client.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True, help="the system database URL")
    parser.add_argument("--poll", type=float, default=1.0, help="the queue's polling interval (s); DBOS's default is 1")
    args = parser.parse_args()
    dbos.DBOS(
        config={
            "name": "bench-peers",
            "system_database_url": args.db,
            "executor_id": f"peer-{os.getpid()}",
            "log_level": "WARNING",
        }
    )
    dbos.DBOS.launch()
    # DBOS 3.4 keeps queues in its system database: declared once it is up.
    dbos.DBOS.register_queue(QUEUE, worker_concurrency=100, polling_interval_sec=args.poll, on_conflict="always_update")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"dbos-peer ready pid={os.getpid()}", flush=True)
    stop.wait()
    dbos.DBOS.destroy(workflow_completion_timeout_sec=0)
    sys.exit(0)


if __name__ == "__main__":
    main()
