"""Run the peers benchmark: ``python -m bench.peers [--quick] [--rounds N] [--only stepq,restate,...]``.

``--setup`` installs the peers (a venv and an npm prefix under bench/results/peers/) and exits. Each
round runs every selected system once, in a rotating order; a system's block starts its servers on
fresh state, runs W1, W3 and W4 on one worker and W2 on two, then stops every process it started.
A system whose server, database or package is missing is skipped with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis

from bench.common import REPO_ROOT, BenchError, Proc, RedisServer, find_redis_server, stop_all
from bench.peers import redis_costs, setup
from bench.peers.figures import (
    W5_RTT_MS,
    Workload,
    as_json,
    commands_table,
    figures,
    medians,
    table,
    targets,
    targets_table,
    workloads,
)
from bench.peers.systems import ALL, Ctx, System

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
#: A block's time limit (seconds; the full sizes). DBOS at its 1 s poll is the slowest (W3 ~ 2 min).
BLOCK_LIMIT_S = 600


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true", help="install the peers (venv + npm) and exit")
    parser.add_argument("--quick", action="store_true", help="small sizes and 1 round: a check, not a measurement")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, or 1 with --quick)")
    parser.add_argument(
        "--only",
        help=f"comma-separated systems or families (stepq, restate, dbos, celery, arq), from: {', '.join(ALL)}",
    )
    parser.add_argument("--out", default="bench/results/peers.json", help="where to write the JSON results")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("STEPQ_PEERS_PG_URL", DEFAULT_PG_URL),
        help=f"the PostgreSQL DBOS uses (a fresh database per block); default $STEPQ_PEERS_PG_URL or {DEFAULT_PG_URL}",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working directory (every process's log)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    args = parser.parse_args(argv)
    if args.setup and (args.quick or args.rounds is not None or args.only or args.keep or args.markdown):
        parser.error("--setup installs the peers and runs nothing: give it alone")
    wanted = [n.strip() for n in (args.only or "").split(",") if n.strip()]
    families = {cls.family for cls in ALL.values()}
    unknown = [n for n in wanted if n not in ALL and n not in families]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(ALL)}")
    args.systems = [name for name, cls in ALL.items() if not wanted or name in wanted or cls.family in wanted]
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


async def _driver(system: System, ctx: Ctx, w: Workload, key: str, limit: float) -> None:
    argv = [
        system.python, "-m", "bench.peers.drive", "--system", system.family, "--workload", w.name,
        "--runs", str(w.runs), "--steps", str(w.steps), "--key", key, "--sleep", repr(w.sleep),
        "--gap-ms", w.gap_ms, "--extra-gap-s", repr(system.extra_gap_s if w.name == "w3" else 0.0),
        "--timeout", repr(limit),
    ]  # fmt: skip
    proc = ctx.proc(f"driver-{system.name}-{w.name}", argv, system.driver_env())
    deadline = time.monotonic() + limit + 30
    while proc.alive():
        if time.monotonic() > deadline:
            proc.stop()
            raise BenchError(f"{system.name} {w.name}: the driver did not finish within {limit + 30:g} s")
        await asyncio.sleep(0.05)
    if proc.popen.returncode != 0:
        raise BenchError(f"{system.name} {w.name}: driver exited {proc.popen.returncode}:\n{proc.log_tail()}")


async def _slow_link(ctx: Ctx, store_url: str, rtt_ms: float) -> tuple[Proc, str]:
    """A slow_link process in front of the system's Redis; the URL the workers use through it."""
    parts = urlsplit(store_url)
    argv = [
        sys.executable, "-m", "bench.peers.slow_link", "--target", f"{parts.hostname}:{parts.port}",
        "--rtt-ms", repr(rtt_ms),
    ]  # fmt: skip
    proc = ctx.proc("slow-link", argv, {})
    await proc.wait_for_log("slow-link ready", 30)
    port = int(proc.log_text().split("slow-link ready port=", 1)[1].split()[0])
    return proc, urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


async def _command_pass(system: System, ctx: Ctx, store_url: str, w: Workload, key: str) -> dict[str, float]:
    """W2 again, smaller, with MONITOR listening: which commands clients send and which scripts call."""
    sample = dataclasses.replace(w, runs=max(20, w.runs // 3))
    tap = redis_costs.CommandTap(store_url)
    await tap.start()
    try:
        await _driver(system, ctx, sample, key, 60 + sample.runs * sample.steps * 0.05)
        await asyncio.sleep(0.2)  # the last runs' final commits
    finally:
        await tap.stop()
    return tap.per_step(sample.runs * sample.steps)


async def block(
    system: System, ctx: Ctx, marks: Redis, plan: list[Workload], r: int, idle_s: float
) -> dict[str, float]:
    """One system, one round: every workload (and, on Redis, its idle command rate and commands by
    name); returns the figures. Workers are restarted when the number of workers or the link changes;
    W5's workers reach Redis through a slow_link, its driver (and every marks push) directly."""
    out: dict[str, float] = {}
    store: Redis | None = None
    workers: list[Proc] = []
    link: Proc | None = None
    config: tuple[int, float] | None = None
    try:
        await system.start(ctx)
        store_url = system.store_url()
        store = Redis.from_url(store_url) if store_url else None
        for w in plan:
            if w.rtt_ms and not system.linkable:
                continue
            if (w.workers, w.rtt_ms) != config:
                if store is not None and config == (1, 0.0) and "idle_commands_per_s" not in out:
                    store_url = system.store_url()
                    assert store_url is not None
                    out.update(await redis_costs.idle_rate(store_url, idle_s))
                for proc in workers:
                    proc.stop()
                if link is not None:
                    link.stop()
                    link = None
                worker_url = None
                if w.rtt_ms:
                    assert store_url is not None
                    link, worker_url = await _slow_link(ctx, store_url, w.rtt_ms)
                workers = await system.workers(ctx, w.workers, worker_url)
                config = (w.workers, w.rtt_ms)
                warm = Workload("w1", runs=1, steps=5)
                await _driver(system, ctx, warm, f"warm:{w.name}", 60)
                if worker_url is not None and store_url is not None:
                    # The round trip the workers see, measured now, and the loopback one without the link.
                    out[f"{w.name}_link_rtt_ms"] = await redis_costs.ping_rtt_ms(worker_url)
                    out[f"{w.name}_base_rtt_ms"] = await redis_costs.ping_rtt_ms(store_url)
            key = f"{system.name}:{r}:{w.name}"
            limit = 60 + w.runs * (w.steps * (0.05 + w.rtt_ms / 100) + w.sleep + system.extra_gap_s)
            began = time.monotonic()
            before = await redis_costs.read(store) if store is not None else None
            await _driver(system, ctx, w, key, limit)
            if store is not None and before is not None and w.name == "w2":
                out |= await redis_costs.per_step(store, before, w.runs * w.steps)
            records = [v.decode() for v in await marks.lrange(key, 0, -1)]  # type: ignore[misc]
            sent = [v.decode() for v in await marks.lrange(f"{key}:sent", 0, -1)]  # type: ignore[misc]
            out |= figures(w, records, sent)
            print(f"[peers]   {system.name} {w.name}: {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)
            if store_url is not None and w.name == "w2":
                began = time.monotonic()
                out |= await _command_pass(system, ctx, store_url, w, f"{key}:monitor")
                print(f"[peers]   {system.name} w2 MONITOR pass: {time.monotonic() - began:.1f} s", file=sys.stderr)
    finally:
        if store is not None:
            await store.aclose()
        for proc in reversed(ctx.procs):
            proc.stop()
        await system.stop(ctx)
    return out


def filesystem(path: Path) -> str:
    """The file system type under ``path`` (``ext4``, ``tmpfs``, ...), or "?"."""
    try:
        out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip() or "?"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    load_start = list(os.getloadavg())
    redis_binary = find_redis_server()
    workdir = Path(tempfile.mkdtemp(prefix="stepq-peers-"))
    workdir_fs = filesystem(workdir)
    if workdir_fs in ("tmpfs", "ramfs"):
        # Redis's AOF and Restate's data live there: an fsync on memory costs nothing, unlike Postgres's.
        print(f"[peers] WARNING: {workdir} is on {workdir_fs}: set TMPDIR to a directory on disk", file=sys.stderr)
    plan = workloads(args.quick)
    systems: dict[str, System] = {}
    skipped: dict[str, str] = {}
    for name in args.systems:
        system = ALL[name]()
        reason = system.missing(args.pg_url)
        if reason:
            skipped[name] = reason
            print(f"[peers] {name} skipped: {reason}", file=sys.stderr, flush=True)
        else:
            systems[name] = system
    per_round: dict[str, dict[str, list[float]]] = {name: {} for name in systems}
    errors: dict[str, list[str]] = {}
    names = list(systems)
    failed = False
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)] if names else []
        for name in order:
            system = systems[name]
            print(f"[peers] round {r + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
            marks_server = RedisServer(redis_binary, workdir / f"marks-{r}-{name}")
            await marks_server.start()
            ctx = Ctx(workdir / f"{r}-{name}", redis_binary, marks_server.url(), args.pg_url)
            marks = Redis.from_url(marks_server.url())
            limit = BLOCK_LIMIT_S / (4 if args.quick else 1)
            error: str | None = None
            try:
                idle_s = 5.0 if args.quick else 12.0
                values = await asyncio.wait_for(block(system, ctx, marks, plan, r, idle_s), limit)
                for key, value in values.items():
                    per_round[name].setdefault(key, []).append(value)
            except TimeoutError:
                error = f"did not finish within {limit:g} s"
            except BenchError as exc:
                error = str(exc)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            finally:
                await marks.aclose()
                marks_server.stop()
            if error is not None:
                failed = True
                errors.setdefault(name, []).append(f"round {r + 1}: {error}")
                print(f"[peers] {name}: ERROR in round {r + 1}: {error[:2000]}", file=sys.stderr, flush=True)
    if args.keep or failed:
        print(f"[peers] logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    results = {name: medians(per_round[name]) for name in systems}
    return {
        "meta": {
            "started": started,
            "mode": "quick" if args.quick else "full",
            "rounds": args.rounds,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "workdir_filesystem": workdir_fs,
            "loadavg_start": load_start,
            "loadavg_end": list(os.getloadavg()),
            "workloads": [_workload(w) for w in plan],
        },
        "systems": {
            name: {
                "durability": s.durability,
                "settings": s.settings(),
                "versions": s.versions(redis_binary),
                "per_round": per_round[name],
            }
            for name, s in systems.items()
        },
        "skipped": skipped,
        "errors": errors,
        "results": as_json(results),
        "_results": results,
    }


def _workload(w: Workload) -> dict[str, Any]:
    return {"name": w.name, "runs": w.runs, "steps": w.steps, "workers": w.workers, "sleep_s": w.sleep}


def report(document: dict[str, Any], markdown: bool) -> str:
    results = document.pop("_results")
    legend = "(x) = system / stepq; W2: higher is better, every other column: lower is better."
    lines = [table(results, markdown), "", legend, ""]
    stepqs = [name for name in ("stepq", "stepq-aof-always") if name in results]
    tail = [
        "Issue 10's targets, from this run:",
        "",
        targets_table(targets(results), markdown),
        "",
        "Redis commands per step (W2, by name; a script's calls counted under their own names):",
        "",
        commands_table(results, stepqs, markdown),
        "",
    ]
    item, indent = ("- ", "  ") if markdown else ("", "    ")
    for name, info in document["systems"].items():
        versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        lines.append(f"{item}{name}: {info['durability']}")
        lines.append(f"{indent}{info['settings']}; {versions}")
    for name, reason in document["skipped"].items():
        lines.append(f"{item}{name}: SKIPPED: {reason}")
    for name, errs in document["errors"].items():
        for err in errs:
            lines.append(f"{item}{name}: ERROR {err.splitlines()[0][:200]}")
    meta = document["meta"]
    lines.append(
        f"{item}{meta['mode']} run, {meta['rounds']} round(s), {meta['cpus']} CPUs, load average at the end "
        f"{meta['loadavg_end'][0]:.1f}; Redis AOF and Restate data on {meta['workdir_filesystem']}"
    )
    for name in ("stepq", "celery", "arq"):
        if "w5_link_rtt_ms" in results.get(name, {}):
            values = results[name]
            lines.append(
                f"{item}W5 ({name}): the workers' Redis connections through bench/peers/slow_link.py "
                f"(+{W5_RTT_MS:g} ms RTT), the driver's and the marks' direct; PING p50 through the link "
                f"{values['w5_link_rtt_ms']:.2f} ms, direct {values['w5_base_rtt_ms']:.2f} ms"
            )
    return "\n".join([*lines, "", *tail])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.setup:
        return setup.setup()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that atexit stops our processes
    began = time.monotonic()
    try:
        document = asyncio.run(run(args))
    finally:
        stop_all()
    document["meta"]["seconds"] = round(time.monotonic() - began, 1)
    text = report(document, args.markdown)
    out = Path(args.out) if Path(args.out).is_absolute() else REPO_ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print()
    print(text)
    print(f"\n{document['meta']['seconds']} s; wrote {out}")
    return 1 if document["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
