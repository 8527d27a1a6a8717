"""The results table printed at the end of a run."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bench.common import BenchResult, Metric


def value(number: float | None, unit: str, censored: bool = False) -> str:
    if number is None or math.isnan(number):
        return "—"
    if unit == "ms":
        text = f"{number:.2f} ms" if number < 100 else f"{number:,.0f} ms"
    elif unit == "s":
        text = f"{number:.2f} s" if number < 100 else f"{number:,.0f} s"
    elif unit == "x":
        text = f"{number:.2f}x"
    elif number >= 100:
        text = f"{number:,.0f} {unit}"
    else:
        text = f"{number:.3g} {unit}"
    return (">" if censored else "") + text


def _ratio(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    return f"{ratio:.2f}x" if ratio >= 0.01 else f"{ratio:.1e}x"


def verdict(metric: Metric) -> str:
    if metric.target is None:
        return "info"
    if metric.passed is None:
        return "n/a"
    return "PASS" if metric.passed else "FAIL"


HEADERS = ("benchmark", "metric", "stepq", "baseline", "ratio", "target", "result")


def rows(results: Sequence[BenchResult]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for result in results:
        if result.error is not None:
            out.append((result.name, f"ERROR: {result.error.splitlines()[0][:90]}", "", "", "", "", "ERROR"))
        for m in result.metrics:
            out.append(
                (
                    result.name,
                    m.name,
                    value(m.stepq, m.unit, m.censored),
                    value(m.baseline, m.unit) if m.baseline is not None else "—",
                    _ratio(m.ratio),
                    m.target.text(m.unit) if m.target else "—",
                    verdict(m),
                )
            )
    return out


def table(results: Sequence[BenchResult]) -> str:
    body = rows(results)
    widths = [max(len(r[i]) for r in [HEADERS, *body]) for i in range(len(HEADERS))]
    right = {2, 3, 4}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(HEADERS), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in body]
    baselines = sorted(
        {f"{m.name.split(' (')[0]}: {m.baseline_label}" for r in results for m in r.metrics if m.baseline_label}
    )
    notes = [f"{r.name}/{m.name}: {m.note}" for r in results for m in r.metrics if m.note]
    if baselines:
        out += ["", "baselines (measured in this run):", *[f"  {b}" for b in baselines]]
    if notes:
        out += ["", "notes:", *[f"  {n}" for n in notes]]
    return "\n".join(out)


def markdown(results: Sequence[BenchResult]) -> str:
    body = rows(results)
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out)
