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
    #: Round-trip time added between the workers and the system's Redis (bench/peers/slow_link.py).
    rtt_ms: float = 0.0


#: W5's added round trip between the workers and Redis.
W5_RTT_MS = 2.0


def workloads(quick: bool) -> list[Workload]:
    """W1, W3, W4 on one worker, W2 on two, then W5 (W1 with the workers' Redis 2 ms of round trip
    away; Redis-backed systems only): the order a block runs them in."""
    return [
        Workload("w1", runs=1 if quick else 3, steps=100),
        Workload("w3", runs=30 if quick else 200, steps=1),
        Workload("w4", runs=20 if quick else 100, steps=2, sleep=1.0, gap_ms="0,20"),
        Workload("w2", runs=100 if quick else 300, steps=10, workers=2),
        Workload("w5", runs=1 if quick else 3, steps=100, rtt_ms=W5_RTT_MS),
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
    "idle_commands_per_s": ("idle cmds sent/s", "/s", False),
    "idle_redis_calls_per_s": ("idle Redis calls/s (scripts' too)", "/s", False),
    "w5_hop_p50": (f"W5 hop p50 (+{W5_RTT_MS:g} ms RTT)", "ms", False),
    "w5_link_rtt_ms": ("W5 link PING p50", "ms", False),
}


def figures(w: Workload, records: Sequence[str], sent: Sequence[str]) -> dict[str, float]:
    """One block's figures for one workload from its runs' JSON records (and W2's submission time)."""
    runs = [json.loads(r) for r in records]
    if w.name in ("w1", "w5"):
        hops = [h for run in runs for h in gaps(run["steps"])]
        totals = [1000 * (run["steps"][-1] - run["steps"][0]) for run in runs]
        n = w.name
        p50, p99 = percentile(hops, 50), percentile(hops, 99)
        return {f"{n}_hop_p50": p50, f"{n}_hop_p99": p99, f"{n}_total": median(totals)}
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
    return _grid(header, body, markdown)


def _grid(header: list[str], body: list[list[str]], markdown: bool) -> str:
    """Rows under a header, as Markdown or as aligned text."""
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


@dataclasses.dataclass(frozen=True, slots=True)
class TargetRow:
    """One of issue 10's targets, from one run's figures: what, the figure, the limit, pass or miss."""

    what: str
    figure: str
    limit: str
    #: None when a figure it needs is missing (a system skipped or failed).
    passed: bool | None


def _get(results: dict[str, dict[str, float]], system: str, key: str) -> float | None:
    value = results.get(system, {}).get(key)
    return None if value is None or math.isnan(value) else value


def _ratio_row(
    results: dict[str, dict[str, float]], what: str, key: str, unit: str, num: str, den: str, limit: float, op: str
) -> TargetRow:
    a, b = _get(results, num, key), _get(results, den, key)
    if a is None or b is None or b == 0:
        missing = num if a is None else den
        return TargetRow(what, f"— (no {missing} figure)", f"{op} {limit:.3g}x", None)
    ratio = a / b
    passed = {"<=": ratio <= limit, ">=": ratio >= limit, "<": ratio < limit}[op]
    figure = f"{ratio:.2f}x ({_number(a, unit)} / {_number(b, unit)} {unit})"
    return TargetRow(what, figure, f"{op} {limit:.3g}x", passed)


def _value_row(
    results: dict[str, dict[str, float]], what: str, key: str, unit: str, system: str, limit: float
) -> TargetRow:
    value = _get(results, system, key)
    if value is None:
        return TargetRow(what, f"— (no {system} figure)", f"<= {limit:g} {unit}", None)
    return TargetRow(what, f"{_number(value, unit)} {unit}", f"<= {limit:g} {unit}", value <= limit)


def targets(results: dict[str, dict[str, float]]) -> list[TargetRow]:
    """Issue 10's targets as ratios and figures of this run (stepq at Redis defaults unless said)."""
    aof, base = "stepq-aof-always", "stepq"
    w1, w2 = "W1 per-step p50, stepq AOF always / Restate", "W2 steps/s (all done), stepq AOF always / Restate"
    rows = [
        _ratio_row(results, w1, "w1_hop_p50", "ms", aof, "restate", 0.5, "<="),
        _ratio_row(results, "W1 per-step p50, stepq / Restate", "w1_hop_p50", "ms", base, "restate", 1 / 3, "<="),
        _ratio_row(results, w2, "w2_all_done", "/s", aof, "restate", 2, ">="),
        _value_row(results, "W3 event -> first step p50, stepq", "w3_p50", "ms", base, 1.0),
        _ratio_row(results, "W3 p50, stepq / Celery", "w3_p50", "ms", base, "celery", 1, "<"),
        _ratio_row(results, "W3 p50, stepq / arq", "w3_p50", "ms", base, "arq", 1, "<"),
        _ratio_row(results, "W4 sleep lateness p50, stepq / Celery", "w4_p50", "ms", base, "celery", 1, "<="),
        _value_row(results, "idle worker, Redis commands/s, stepq", "idle_commands_per_s", "/s", base, 1.0),
        _value_row(results, "Redis CPU per step (W2), stepq", "w2_redis_cpu_ms_per_step", "ms", base, 0.1),
    ]  # fmt: skip
    if _get(results, "restate", "w2_sends_overran"):
        # Its sends took longer than the delay they were given: its ingress is in its figure after all.
        rows[2] = dataclasses.replace(rows[2], figure=rows[2].figure + "; Restate's sends overran")
    hop, rtt = _get(results, base, "w5_hop_p50"), _get(results, base, "w5_link_rtt_ms")
    what = f"W5 per-step p50 at +{W5_RTT_MS:g} ms RTT, stepq (RTT: PING p50 through the link)"
    if hop is None or rtt is None:
        rows.append(TargetRow(what, "— (no stepq W5 figure)", "<= RTT + 1 ms", None))
    else:
        rows.append(TargetRow(what, f"{hop:.2f} ms (RTT {rtt:.2f} ms)", f"<= {rtt + 1:.2f} ms", hop <= rtt + 1))
    return rows


def targets_table(rows: Sequence[TargetRow], markdown: bool = False) -> str:
    header = ["target (issue 10)", "this run", "limit", "result"]
    body = [[r.what, r.figure, r.limit, {True: "pass", False: "MISS", None: "n/a"}[r.passed]] for r in rows]
    return _grid(header, body, markdown)


def commands_table(results: dict[str, dict[str, float]], systems: Sequence[str], markdown: bool = False) -> str:
    """Redis commands per step by name: W2's INFO commandstats deltas (scripts' calls under their own
    names) and, from the MONITOR pass after W2, which of them clients sent and which scripts called."""
    header = ["system", "command", "W2 calls/step", "MONITOR pass: sent by clients", "called in scripts"]
    body: list[list[str]] = []
    for system in systems:
        values = results.get(system, {})
        names = sorted(
            {k.split(":", 1)[1] for k in values if k.startswith("cmd:")}
            | {k.split(":", 2)[2] for k in values if k.startswith("mon:")},
            key=lambda n: -values.get(f"cmd:{n}", 0.0),
        )
        for name in names:
            keys = (f"cmd:{name}", f"mon:top:{name}", f"mon:lua:{name}")
            body.append([system, name, *(f"{values[k]:.2f}" if k in values else "0" for k in keys)])
        totals = [sum(v for k, v in values.items() if k.startswith(p)) for p in ("cmd:", "mon:top:", "mon:lua:")]
        if names:
            body.append([system, "TOTAL", *(f"{t:.2f}" for t in totals)])
    return _grid(header, body, markdown)
