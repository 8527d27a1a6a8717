"""The four workloads' figures, computed from the runs' records the same way for every system,
and the table that puts them side by side (each system / stepq)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

from bench.common import gaps, median, percentile


@dataclasses.dataclass(frozen=True, slots=True)
class Workload:
    """One workload: its runs, steps per run, sleep, spacing of starts and workers."""

    name: str
    runs: int
    steps: int
    workers: int = 1
    sleep: float = 0.0
    gap_ms: str = "20,40"


def workloads(quick: bool) -> list[Workload]:
    """W1, W3, W4 on one worker, then W2 on two (the order a block runs them in)."""
    return [
        Workload("w1", runs=1 if quick else 3, steps=100),
        Workload("w3", runs=30 if quick else 200, steps=1),
        Workload("w4", runs=20 if quick else 100, steps=2, sleep=1.0, gap_ms="0,20"),
        Workload("w2", runs=100 if quick else 300, steps=10, workers=2),
    ]


#: Column key -> (header, unit, higher is better).
COLUMNS: dict[str, tuple[str, str, bool]] = {
    "w1_hop_p50": ("W1 hop p50", "ms", False),
    "w1_hop_p99": ("W1 hop p99", "ms", False),
    "w1_total": ("W1 total", "ms", False),
    "w2_last_step": ("W2 steps/s (last step)", "/s", True),
    "w2_all_done": ("W2 steps/s (all done)", "/s", True),
    "w3_p50": ("W3 start p50", "ms", False),
    "w3_p99": ("W3 start p99", "ms", False),
    "w4_p50": ("W4 late p50", "ms", False),
    "w4_p99": ("W4 late p99", "ms", False),
    "w2_redis_cpu_ms_per_step": ("W2 Redis CPU/step", "ms", False),
    "idle_commands_per_s": ("idle Redis cmds/s", "/s", False),
}


def figures(w: Workload, records: Sequence[str], sent: Sequence[str]) -> dict[str, float]:
    """One block's figures for one workload from its runs' JSON records (and W2's submission time)."""
    runs = [json.loads(r) for r in records]
    if w.name == "w1":
        hops = [h for run in runs for h in gaps(run["steps"])]
        totals = [1000 * (run["steps"][-1] - run["steps"][0]) for run in runs]
        return {"w1_hop_p50": percentile(hops, 50), "w1_hop_p99": percentile(hops, 99), "w1_total": median(totals)}
    if w.name == "w2":
        start = float(sent[0])
        work = w.runs * w.steps
        last = max(run["steps"][-1] for run in runs)
        done = max(run["end"] for run in runs)
        began, ended = float(sent[1]), float(sent[2])
        # A run's last step start -> its end (committing the last step): why "all done" trails.
        tails = [1000 * (run["end"] - run["steps"][-1]) for run in runs]
        out = {
            "w2_last_step": work / (last - start),
            "w2_all_done": work / (done - start),
            "w2_submit_ms": 1000 * (ended - began),
            "w2_tail_p50_ms": percentile(tails, 50),
            "w2_tail_max_ms": max(tails),
        }
        if start != began:  # a gated batch (Restate): 1 when the sends overran the due time
            out["w2_sends_overran"] = float(ended > start)
        return out
    if w.name == "w3":
        starts = [1000 * (run["steps"][0] - run["sent"]) for run in runs]
        return {"w3_p50": percentile(starts, 50), "w3_p99": percentile(starts, 99)}
    late = [1000 * (run["steps"][1] - run["steps"][0] - w.sleep) for run in runs]
    return {"w4_p50": percentile(late, 50), "w4_p99": percentile(late, 99)}


def medians(per_round: dict[str, list[float]]) -> dict[str, float]:
    return {k: median(v) for k, v in per_round.items() if v}


def _number(x: float, unit: str) -> str:
    if math.isnan(x):
        return "—"
    if unit == "/s":
        return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def table(results: dict[str, dict[str, float]], markdown: bool = False) -> str:
    """Systems as rows, figures as columns, each with its ratio to stepq's (system ÷ stepq)."""
    base = results.get("stepq", {})
    header = ["system", *(f"{h} {u}" if u == "ms" else h for h, u, _ in COLUMNS.values())]
    body: list[list[str]] = []
    for system, values in results.items():
        cells = [system]
        for key, (_, unit, _) in COLUMNS.items():
            value = values.get(key, math.nan)
            cell = _number(value, unit)
            if system != "stepq" and base.get(key) and not math.isnan(value):
                cell += f" ({value / base[key]:.2f}x)"
            cells.append(cell)
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in body)])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    out = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in [header, *body]
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def as_json(results: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {s: {k: (None if math.isnan(v) else round(v, 3)) for k, v in vals.items()} for s, vals in results.items()}
