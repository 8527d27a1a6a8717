"""The torture test for as long as asked: ``python bench/torture.py --minutes 30 [--seed N]``.

The same generator, interpreter, model, faults and invariants as ``tests/test_torture.py``, on one
cluster for the whole time: programs are sent at ``--rate`` per second, a worker is SIGKILLed and
replaced every few seconds, one is paused past its lease every minute, Redis restarts every two and
a half minutes (SIGTERM; ``--hard-restarts``: SIGKILL under ``appendfsync always``). At the end every
run is checked against its model, then Redis memory against its baseline after the retention.

Prints the figures (runs, steps, executions, duplicate executions, kills, pauses, restarts) and every
violation with the seed that reproduces it; exits 1 when there was any. ``--only p17,p40`` reruns
just those programs of the seed (a quick way to reduce a failure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stepq.workers.logs import configure
from tests.torture.cluster import Settings
from tests.torture.driver import Config, Torture
from tests.torture.faults import FaultPlan
from tests.torture.program import KINDS, Mix


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/torture.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to send programs (default 30)")
    parser.add_argument("--seed", type=int, help="the generator's seed (default: random, printed)")
    parser.add_argument("--rate", type=float, default=5.0, help="programs sent per second (default 5)")
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between SIGKILLs (default 4)")
    parser.add_argument(
        "--hard-restarts", action="store_true", help="restart Redis with SIGKILL under appendfsync always"
    )
    parser.add_argument(
        "--no-faults", action="store_true", help="no kills, pauses or restarts (to tell faults from load)"
    )
    parser.add_argument("--only", help="comma-separated program ids of the seed to run alone, e.g. p17,p40")
    parser.add_argument(
        "--program",
        action="append",
        help="a program's ops as JSON, run in-process and over HTTP instead of generated ones (repeatable)",
    )
    parser.add_argument(
        "--without",
        help=f"comma-separated kinds the generator leaves out, from: {', '.join(KINDS)} (to tell what a failure needs)",
    )
    parser.add_argument("--retention", type=int, default=30, help="STEPQ_RETENTION_S of the cluster (default 30)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (process logs, violations.txt)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure("warning")  # the driver's own Redis transport logs matching at debug level
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    span = args.minutes * 60
    if args.no_faults:
        faults = FaultPlan(kill_every_s=10**9, pauses_at_s=(), restarts_at_s=(), targeted_kills=False)
    else:
        faults = FaultPlan.repeating(args.minutes, kill_every_s=args.kill_every, hard=args.hard_restarts)
    only = tuple(p.strip() for p in args.only.split(",")) if args.only else ()
    focused = bool(only or args.program)  # a few programs, sent at once
    config = Config(
        seed=seed,
        runs=max([int(p[1:].split("/")[0]) + 1 for p in only if p[0] == "p" and p[1:2].isdigit()] or [1])
        if only
        else max(1, int(span * args.rate)),
        send_over_s=1.0 if focused else span,
        settings=Settings(retention_s=args.retention),
        faults=faults,
        faults_until_s=30.0 if focused else span + 5,
        only=only,
        explicit=tuple(json.loads(p) for p in args.program or ()),
        mix=Mix(without=frozenset(k.strip() for k in args.without.split(","))) if args.without else Mix(),
    )
    directory = Path(tempfile.mkdtemp(prefix=f"stepq-torture-{seed}-"))
    print(f"torture: seed {seed}, {args.minutes:g} min at {args.rate:g} programs/s; logs in {directory}", flush=True)
    report = asyncio.run(Torture(config, directory).run())
    print(report.figures())
    if report.violations:
        print(report.failure_message(limit=40).replace(config.command(), f"python bench/torture.py --seed {seed} ..."))
        print(f"all violations: {directory / 'violations.txt'}")
    elif not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
