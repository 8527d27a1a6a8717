"""py-spy profiles of worker processes, and a summary of where their CPU time went.

``--profile`` attaches ``py-spy record`` to a stepq worker for an extra pass of the latency and
throughput cases (after their measured rounds, so sampling cannot skew a figure), writes the raw
collapsed stacks under ``bench/results/profiles/`` and summarizes them: the functions that use the
most CPU themselves (self), the functions under which most CPU is spent (inclusive), and CPU by area
(stepq's packages, arq, redis-py, asyncio, ...).

Only samples of a thread holding the GIL are taken (``--gil``): on a busy machine a process that
wakes Redis with a socket write is often preempted inside that write, and py-spy would count the
time it then waits for a CPU as time spent writing. So the profile shows Python's own CPU work; the
cost of round trips to Redis is counted separately (Redis reads and bytes per step in the JSON).
Samples whose leaf is a wait are left out as well.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, BenchError, Proc


def pyspy_binary() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise BenchError("--profile needs py-spy: pip install py-spy")
    return found


class PySpy:
    """``py-spy record`` attached to a running process until ``stop()``."""

    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        self.out = out
        argv = [
            pyspy_binary(), "record", "--pid", str(pid), "--rate", str(rate),
            "--format", "raw", "--full-filenames", "--gil", "--output", str(out),
        ]  # fmt: skip
        self.proc = Proc(f"py-spy-{pid}", argv, out.with_suffix(".log"))

    def stop(self) -> None:
        self.proc.send(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.popen.wait(30)
        self.proc.stop()


_OURS = {"sdk": "stepq sdk", "runtime": "stepq runtime", "workers": "stepq workers", "bench": "bench app"}


def _ours(path: str) -> str | None:
    """``pkg/module.py`` when ``path`` is in one of this repository's packages (any checkout of it)."""
    if "site-packages/" in path:
        return None
    # An editable install in strict mode runs the code through a tree of links under build/.
    path = os.path.realpath(path)
    if path.startswith(str(REPO_ROOT) + "/"):
        return path[len(str(REPO_ROOT)) + 1 :]
    found = max((path.rfind(f"/{package}/"), package) for package in _OURS)
    return path[found[0] + 1 :] if found[0] >= 0 else None


def _area(path: str) -> str:
    ours = _ours(path)
    if ours is not None and ours.split("/", 1)[0] in _OURS:
        return _OURS[ours.split("/", 1)[0]]
    for package in ("arq", "redis", "structlog", "msgpack", "hiredis"):
        if f"site-packages/{package}/" in path:
            return "redis-py" if package == "redis" else package
    if "/asyncio/" in path:
        return "asyncio"
    if "site-packages" in path:
        return "other packages"
    return "python stdlib"


def _short(frame: str) -> str:
    """``func (path:line)`` -> ``func (pkg/module.py)``, without the line (lines split one function)."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    ours = _ours(path)
    if ours is not None:
        path = ours
    elif "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/lib/python" in path:
        path = path.split("/lib/python", 1)[1].split("/", 1)[-1]
    return f"{name} ({path})"


def _path(frame: str) -> str:
    return frame.partition(" (")[2].rsplit(":", 1)[0]


#: Leaf frames that mean "waiting", whatever py-spy's own idle detection said (it keeps them here).
IDLE_LEAVES = (
    ("EpollSelector.select", "selectors.py"),  # the event loop waiting for I/O or a timer
    ("_worker", "concurrent/futures/thread.py"),  # an idle thread of the default executor
    ("Condition.wait", "threading.py"),
)


def _idle(frame: str) -> bool:
    name, path = frame.partition(" (")[0], _path(frame)
    return any(name == n and path.endswith(p) for n, p in IDLE_LEAVES)


#: Where a worker's time goes, as inclusive shares: a sample counts for a pattern when any of its
#: frames (``func (path)``) contains the pattern.
FOCUS = (
    "Worker._poll_iteration (arq/",
    "Worker.start_jobs (arq/",
    "Worker.run_job (arq/",
    "Worker.finish_job (arq/",
    "Executor._advance (workers/",
    "RunStore.load (runtime/",
    "RunStore.apply (runtime/",
    "decide (runtime/",
    "Scripts.call (runtime/",
    "execute (sdk/engine.py)",
    "make_context (sdk/",
    "to_thread (asyncio/",
    "(structlog/",
    "(msgpack/",
    "(redis/",
)


def analyse(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive CPU share per function, and self share per area, from py-spy raw output.

    Samples whose leaf is a wait (IDLE_LEAVES) are counted apart and left out of the shares.
    """
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    focus: collections.Counter[str] = collections.Counter()
    total = idle = in_threads = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        if _idle(frames[-1]):
            idle += count
            continue
        total += count
        if any(_path(f).endswith("threading.py") for f in frames[:3]):
            in_threads += count
        self_counts[_short(frames[-1])] += count
        areas[_area(_path(frames[-1]))] += count
        names = {_short(f) for f in frames}
        for name in names:
            inclusive[name] += count
        for pattern in FOCUS:
            if any(pattern in name for name in names):
                focus[pattern] += count

    def share(counter: collections.Counter[str], n: int) -> list[list[Any]]:
        return [[name, round(100 * c / total, 1)] for name, c in counter.most_common(n)] if total else []

    return {
        "samples": total,
        "idle_samples_left_out": idle,
        "pct_in_executor_threads": round(100 * in_threads / total, 1) if total else 0.0,
        "self_pct": share(self_counts, top),
        "inclusive_pct": share(inclusive, top * 2),
        "area_self_pct": share(areas, 20),
        "focus_inclusive_pct": {p: round(100 * focus[p] / total, 1) for p in FOCUS} if total else {},
        "file": str(raw),
    }


def _label(pattern: str) -> str:
    return pattern.strip("(/)") + " (all)" if pattern.startswith("(") else pattern.split(" (")[0]


def format_summary(title: str, summary: dict[str, Any], top: int = 12) -> str:
    lines = [
        f"== profile: {title}: {summary['samples']} busy samples ({summary['idle_samples_left_out']} idle ones left "
        f"out; {summary['pct_in_executor_threads']}% in executor threads) from {summary['file']}"
    ]
    lines.append("  CPU by area (self): " + ", ".join(f"{a} {p}%" for a, p in summary["area_self_pct"]))
    lines.append(
        "  inclusive: " + ", ".join(f"{_label(p)} {v}%" for p, v in summary.get("focus_inclusive_pct", {}).items())
    )
    lines.append("  top self:")
    lines += [f"    {p:5.1f}%  {name}" for name, p in summary["self_pct"][:top]]
    lines.append("  top inclusive:")
    lines += [f"    {p:5.1f}%  {name}" for name, p in summary["inclusive_pct"][: top * 2]]
    return "\n".join(lines)
