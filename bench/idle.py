"""What an idle worker costs Redis: commands per second, on one Redis and on a local Redis Cluster.

    python -m bench.idle [--seconds 60] [--workers 1]

Starts a private redis-server (one shard) and a local cluster of 3 masters with a replica each
(tests/cluster.py: 32 shards), starts ``--workers`` idle ``stepq worker`` processes (default
options: ``STEPQ_IDLE_CHECK`` 4 s) on each, lets them settle, and counts with MONITOR the commands
the workers send the masters over ``--seconds`` (a script's own commands are part of its EVALSHA).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from stepq.workers.embedded import EmbeddedRedis
from tests.cluster import LocalCluster

APP = "tests.apps.cluster_app:client"


def watch(node: EmbeddedRedis, seconds: float, found: collections.Counter[str]) -> None:
    """Count the commands clients send ``node`` for ``seconds`` (MONITOR; a script's own commands,
    which MONITOR also shows, are part of its EVALSHA and not counted)."""
    client = redis.Redis(host=node.host, port=node.port)
    deadline = time.monotonic() + seconds
    try:
        with client.monitor() as monitor:  # type: ignore[no-untyped-call]
            # a command (ours: PING) now and then, so that listen() returns when the time is up
            poke = threading.Thread(target=_poke, args=(node, deadline), daemon=True)
            poke.start()
            for entry in monitor.listen():
                if time.monotonic() > deadline:
                    break
                command = str(entry["command"])
                # a script's own commands; a master's replication pings (lower case: clients send
                # upper case) and what a replica applies from its master's stream
                if entry.get("client_type") == "lua" or command.startswith("ping") or "PXAT" in command:
                    continue
                found[command.split(" ", 1)[0].upper()] += 1
    finally:
        client.close()


def _poke(node: EmbeddedRedis, deadline: float) -> None:
    client = redis.Redis(host=node.host, port=node.port, client_name="poke")
    try:
        while time.monotonic() < deadline + 1:
            time.sleep(1)
        client.execute_command("ECHO", "stepq-idle-poke")  # type: ignore[no-untyped-call]
    finally:
        client.close()


def measure(label: str, url: str, nodes: list[EmbeddedRedis], workers: int, seconds: float) -> dict[str, Any]:
    env = {**os.environ, "STEPQ_REDIS_URL": url, "STEPQ_LOG_LEVEL": "warning"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "stepq.workers.cli", "worker", APP, "--redis-url", url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        time.sleep(15)  # started, registered, the shards' first idle checks staggered in
        found: collections.Counter[str] = collections.Counter()
        watchers = [threading.Thread(target=watch, args=(node, seconds, found)) for node in nodes]
        for thread in watchers:
            thread.start()
        for thread in watchers:
            thread.join()
        found.pop("ECHO", None)
        per_s = sum(found.values()) / seconds / workers
        return {"setup": label, "commands_per_worker_s": round(per_s, 3), "by_command": dict(found.most_common())}
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stepq-idle-") as directory:
        with EmbeddedRedis() as single:
            print(measure("one Redis (1 shard)", single.url, [single], args.workers, args.seconds))
        with LocalCluster(Path(directory) / "cluster") as cluster:
            # the masters only: a replica's MONITOR also shows what it applies from its master
            masters = cluster.masters()
            print(measure("Redis Cluster, 3 masters (32 shards)", cluster.url, masters, args.workers, args.seconds))


if __name__ == "__main__":
    main()
