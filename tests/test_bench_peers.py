"""The peers benchmark's arithmetic and options (bench/peers): no servers, no Redis."""

from __future__ import annotations

import json

import pytest

from bench.peers.__main__ import parse_args
from bench.peers.figures import Workload, commands_table, figures, table, targets, workloads


def run(steps: list[float], end: float, sent: float | None = None) -> str:
    return json.dumps({"steps": steps, "end": end, "sent": sent})


def test_w1_hops_are_gaps_between_step_starts() -> None:
    w = Workload("w1", runs=2, steps=3)
    out = figures(w, [run([10.0, 10.001, 10.003], 10.004), run([20.0, 20.002, 20.004], 20.005)], [])
    assert out["w1_hop_p50"] == pytest.approx(2.0)
    assert out["w1_total"] == pytest.approx(3.5)


def test_w2_rates_run_from_the_clock_start() -> None:
    w = Workload("w2", runs=2, steps=10, workers=2)
    records = [run([100.1] * 10, 100.2), run([100.4] * 10, 100.5)]
    out = figures(w, records, ["100.0", "100.0", "100.05"])
    assert out["w2_last_step"] == pytest.approx(20 / 0.4)
    assert out["w2_all_done"] == pytest.approx(20 / 0.5)
    assert out["w2_submit_ms"] == pytest.approx(50)
    assert "w2_sends_overran" not in out  # only a gated batch (Restate) has one


def test_w2_gated_batch_says_when_its_sends_overran() -> None:
    w = Workload("w2", runs=1, steps=1, workers=2)
    out = figures(w, [run([101.5], 101.6)], ["101.0", "100.0", "101.2"])
    assert out["w2_sends_overran"] == 1.0


def test_w3_and_w4_latencies() -> None:
    w3 = figures(Workload("w3", runs=1, steps=1), [run([5.004], 5.005, sent=5.0)], [])
    assert w3["w3_p50"] == pytest.approx(4.0)
    w4 = figures(Workload("w4", runs=1, steps=2, sleep=1.0), [run([1.0, 2.006], 2.007)], [])
    assert w4["w4_p50"] == pytest.approx(6.0)


def test_table_gives_ratios_to_stepq() -> None:
    text = table({"stepq": {"w1_hop_p50": 2.0}, "restate": {"w1_hop_p50": 3.0}})
    assert "3.00 (1.50x)" in text


def test_only_selects_families_and_rejects_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--only", "stepq,dbos"]).systems == ["stepq", "stepq-aof-always", "dbos", "dbos-poll-1ms"]
    assert parse_args(["--only", "dbos-poll-1ms"]).systems == ["dbos-poll-1ms"]
    with pytest.raises(SystemExit):
        parse_args(["--only", "temporal"])
    assert "unknown system(s) temporal" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--setup", "--quick"])


def test_w5_is_w1_behind_the_slow_link_and_comes_last() -> None:
    plan = workloads(quick=True)
    assert [w.name for w in plan][-1] == "w5"
    assert plan[-1].rtt_ms == 2.0 and plan[-1].steps == 100
    out = figures(plan[-1], [run([10.0, 10.004, 10.008], 10.009)], [])
    assert out["w5_hop_p50"] == pytest.approx(4.0)
    assert "w1_hop_p50" not in out


def _by_what(results: dict[str, dict[str, float]]) -> dict[str, tuple[str, bool | None]]:
    return {row.what: (row.figure, row.passed) for row in targets(results)}


def test_targets_are_ratios_and_figures_of_the_same_run() -> None:
    results = {
        "stepq": {"w1_hop_p50": 0.5, "w3_p50": 0.8, "w4_p50": 2.0, "idle_commands_per_s": 0.5,
                  "w2_redis_cpu_ms_per_step": 0.2, "w5_hop_p50": 3.4, "w5_link_rtt_ms": 2.5},
        "stepq-aof-always": {"w1_hop_p50": 1.0, "w2_all_done": 3000.0},
        "restate": {"w1_hop_p50": 1.8, "w2_all_done": 1000.0},
        "celery": {"w3_p50": 4.0, "w4_p50": 1.5},
    }  # fmt: skip
    rows = _by_what(results)
    assert rows["W1 per-step p50, stepq AOF always / Restate"] == ("0.56x (1.00 / 1.80 ms)", False)
    assert rows["W1 per-step p50, stepq / Restate"][1] is True
    assert rows["W2 steps/s (all done), stepq AOF always / Restate"][1] is True
    assert rows["W3 event -> first step p50, stepq"] == ("0.80 ms", True)
    assert rows["W3 p50, stepq / Celery"][1] is True
    assert rows["W3 p50, stepq / arq"] == ("— (no arq figure)", None)  # arq not run: neither pass nor miss
    assert rows["W4 sleep lateness p50, stepq / Celery"][1] is False
    assert rows["idle worker, Redis commands/s, stepq"][1] is True
    assert rows["Redis CPU per step (W2), stepq"][1] is False
    w5 = next(r for r in targets(results) if r.what.startswith("W5"))
    assert (w5.limit, w5.passed) == ("<= 3.50 ms", True)  # the RTT measured through the link, + 1 ms


def test_w2_target_says_when_restates_sends_overran() -> None:
    results = {"stepq-aof-always": {"w2_all_done": 3000.0}, "restate": {"w2_all_done": 1000.0, "w2_sends_overran": 1.0}}
    figure, _ = _by_what(results)["W2 steps/s (all done), stepq AOF always / Restate"]
    assert figure.endswith("Restate's sends overran")


def test_commands_table_splits_client_sent_from_script_calls() -> None:
    values = {"cmd:evalsha": 3.0, "cmd:hget": 4.0, "mon:top:evalsha": 3.1, "mon:lua:hget": 4.2}
    text = commands_table({"stepq": values}, ["stepq"], markdown=True)
    lines = text.splitlines()
    assert lines[2] == "| stepq | hget | 4.00 | 0 | 4.20 |"  # most calls first
    assert lines[3] == "| stepq | evalsha | 3.00 | 3.10 | 0 |"
    assert lines[-1] == "| stepq | TOTAL | 7.00 | 3.10 | 4.20 |"
