"""Run stepq's benchmarks: ``python bench/run.py [--quick] [--only NAME[,NAME]] [--out PATH] [--profile]``.

Each benchmark starts its own redis-server (free loopback port, no persistence: the shared Redis
on 6379 is never touched) and real worker processes, measures stepq and a raw arq baseline in the
same run, and stops everything it started. The table is printed; the figures, the baselines and the
details (distributions, CPU per step, commands per step, ...) are written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
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

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.common import REPO_ROOT, BenchError, BenchResult, Env, find_redis_server, redis_version, stop_all
from bench.revisions import export_package

#: Benchmark modules in the order they run, with a time limit for each (seconds, full run).
BENCHMARKS: dict[str, float] = {
    "latency": 180,
    "throughput": 400,
    "first_step": 180,
    "sleep": 180,
    "recovery": 240,
    "replay": 300,
    "memory": 180,
    "flow": 600,
    "queries": 600,
    "dashboard": 600,
    "tracing": 300,
    "cluster": 600,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: the whole suite in about a minute")
    parser.add_argument("--only", help=f"comma-separated benchmarks to run, from: {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", default="bench/results/latest.json", help="where to write the JSON results")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile a stepq worker with py-spy on the latency and throughput cases (needs py-spy)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working directory (Redis and worker logs)")
    parser.add_argument(
        "--source",
        metavar="REV",
        help="benchmark stepq as committed at git revision REV (e.g. HEAD) instead of the working tree; "
        "it is exported to a temporary directory with this bench/ beside it",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in (args.only or "").split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    args.names = names
    return args


def run_at_revision(args: argparse.Namespace, argv: list[str]) -> int:
    """Export ``args.source``'s code as the ``stepq`` package (bench/revisions.py), first on
    ``PYTHONPATH`` (ahead of the installed working tree), and run this bench/ against it."""
    rev = subprocess.run(
        ["git", "rev-parse", "--verify", f"{args.source}^{{commit}}"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    if rev.returncode != 0:
        print(f"bench: unknown revision {args.source!r}: {rev.stderr.strip()}", file=sys.stderr)
        return 2
    commit = rev.stdout.strip()
    with tempfile.TemporaryDirectory(prefix="stepq-bench-src-") as tmp:
        try:
            export_package(commit, Path(tmp) / "code")
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        shutil.copytree(
            REPO_ROOT / "bench", Path(tmp) / "bench", ignore=shutil.ignore_patterns("results", "__pycache__")
        )
        # the tests' apps (bench workers import some) come from the working tree, like bench/
        out = Path(args.out) if Path(args.out).is_absolute() else Path.cwd() / args.out
        rest = _without_source(argv)
        rest = [a for i, a in enumerate(rest) if a != "--out" and (i == 0 or rest[i - 1] != "--out")]
        rest = [a for a in rest if not a.startswith("--out=")]
        path = os.pathsep.join([str(Path(tmp) / "code"), tmp, str(REPO_ROOT)])
        env = {**os.environ, "PYTHONPATH": path, "STEPQ_BENCH_SOURCE": f"{args.source} ({commit})"}
        print(f"[bench] benchmarking {args.source} = {commit[:12]} from {tmp}", file=sys.stderr, flush=True)
        child = subprocess.run([sys.executable, "-m", "bench.run", *rest, "--out", str(out)], cwd=tmp, env=env)
        return child.returncode


def _without_source(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--source":
            skip = True
        elif not arg.startswith("--source="):
            out.append(arg)
    return out


def meta(args: argparse.Namespace, redis_binary: str) -> dict[str, Any]:
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    import arq
    import redis

    return {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "source": os.environ.get("STEPQ_BENCH_SOURCE") or "working tree",
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--", "sdk", "runtime", "workers")),
        "sdk_path": str(Path(importlib.import_module("stepq").__file__ or "").parent),
        "python": platform.python_version(),
        "arq": getattr(arq, "VERSION", "?"),
        "redis_py": redis.__version__,
        "redis_server": ".".join(map(str, redis_version(redis_binary))),
        "redis_binary": redis_binary,
        "cpus": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "platform": platform.platform(),
    }


async def suite(args: argparse.Namespace) -> tuple[list[BenchResult], dict[str, Any], Path]:
    redis_binary = find_redis_server()
    workdir = Path(tempfile.mkdtemp(prefix="stepq-bench-"))
    out = Path(args.out)
    if not out.is_absolute():
        out = REPO_ROOT / out
    profile_dir = out.parent / "profiles" if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        from bench.profiling import pyspy_binary

        pyspy_binary()
    env = Env(quick=args.quick, workdir=workdir, redis_binary=redis_binary, profile_dir=profile_dir)
    info = meta(args, redis_binary)
    results: list[BenchResult] = []
    failed = False
    for name in args.names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        began = time.monotonic()
        load_before = os.getloadavg()[0]
        limit = BENCHMARKS[name] / (2 if args.quick else 1)
        module = importlib.import_module(f"bench.{name}")
        try:
            result: BenchResult = await asyncio.wait_for(module.run(env), limit)
        except TimeoutError:
            result = BenchResult(name, error=f"did not finish within {limit:g} s")
        except BenchError as exc:
            result = BenchResult(name, error=str(exc))
        except Exception as exc:
            result = BenchResult(name, error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        result.seconds = time.monotonic() - began
        result.details["loadavg_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        failed |= result.error is not None
        results.append(result)
        status = "ERROR: " + result.error if result.error else "ok"
        print(f"[bench] {name}: {status} ({result.seconds:.1f} s)", file=sys.stderr, flush=True)
    info["loadavg_end"] = list(os.getloadavg())
    if args.keep or failed:
        print(f"[bench] logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return results, info, out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.source:
        return run_at_revision(args, argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that atexit stops our processes
    began = time.monotonic()
    try:
        results, info, out = asyncio.run(suite(args))
    finally:
        stop_all()
    info["seconds"] = round(time.monotonic() - began, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": info, "benchmarks": {r.name: r.to_dict() for r in results}}
    out.write_text(json.dumps(document, indent=2) + "\n")
    print()
    print(report.table(results))
    for r in results:
        if isinstance(r.details.get("report"), str):  # a benchmark's own summary (bench/cluster.py)
            print()
            print(r.details["report"])
    if args.profile:
        from bench.profiling import format_summary

        for r in results:
            if "profile" in r.details:
                print()
                print(format_summary(r.name, r.details["profile"]))
            for key, summary in r.details.get("profiles", {}).items():
                print()
                print(format_summary(f"{r.name}: {key}", summary))
    loads = [x for r in results for x in r.details.get("loadavg_1min_before_after", [])]
    load = f"load average {min(loads):.1f}-{max(loads):.1f}" if loads else "load average unknown"
    print(
        f"\n{info['mode']} run of {info['source']}: {info['seconds']} s, {info['cpus']} CPUs ({load}), "
        f"redis {info['redis_server']}; wrote {out}"
    )
    if loads and max(loads) > (info["cpus"] or 1):
        print("the machine was busy with other work: compare the ratios, not the absolute figures")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
