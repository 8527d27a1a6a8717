"""The peers benchmark's arithmetic and options (bench/peers): no servers, no Redis."""

from __future__ import annotations

import json

import pytest

from bench.peers.__main__ import parse_args
from bench.peers.figures import Workload, figures, table


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
