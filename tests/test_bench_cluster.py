"""Pure test of bench/cluster.py's arithmetic: shares, CPU per step and the projection per Redis core."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from bench.cluster import Deployment, Master, report, totals


def deployment() -> Deployment:
    masters = [
        Master("master 1", 1, list(range(0, 16)), Redis()),  # (never connects: no command is sent)
        Master("master 2", 2, list(range(16, 32)), Redis()),
    ]
    return Deployment("cluster", "2 masters", Path("/nonexistent"), "redis://x", 32, None, masters, start_via="test")


def drain(seconds: float, cpu: tuple[float, float], steps: tuple[int, int]) -> dict[str, object]:
    return {
        "steps": sum(steps),
        "seconds": seconds,
        "worker_cpu_s": 2.0,
        "masters": [
            {
                "label": f"master {i + 1}",
                "shards": 16,
                "steps": steps[i],
                "cpu_s": cpu[i],
                "calls": {"evalsha": steps[i]},
            }
            for i in range(2)
        ],
    }


def test_each_master_is_charged_for_the_steps_of_its_own_shards() -> None:
    # master 1 carried 3/4 of the steps for 0.6 s of CPU, master 2 1/4 for 0.4 s: master 2 costs more a step
    rounds = [drain(4.0, (0.3, 0.2), (3000, 1000)), drain(6.0, (0.3, 0.2), (3000, 1000))]
    t = totals(deployment(), rounds)
    assert t["steps"] == 8000 and t["steps_per_s"] == 800.0
    assert t["redis_cpu_ms_per_step"] == pytest.approx(1000 * 1.0 / 8000)
    assert t["worker_cpu_ms_per_step"] == pytest.approx(1000 * 4.0 / 8000)
    one, two = t["masters"]
    assert (one["step_share"], two["step_share"]) == (0.75, 0.25)
    assert (one["cpu_share"], two["cpu_share"]) == (0.6, 0.4)
    assert (one["shard_share"], two["shard_share"]) == (0.5, 0.5)
    assert one["cpu_ms_per_own_step"] == pytest.approx(0.1) and two["cpu_ms_per_own_step"] == pytest.approx(0.2)
    assert (one["steps_per_s_per_core"], two["steps_per_s_per_core"]) == (10_000, 5_000)
    assert one["commands_per_step"] == 0.75 and t["commands_per_step"] == 1.0
    # a master a core: master 1 spends 0.075 ms per step of the whole workload and saturates first
    assert t["projected_steps_per_s_on_one_core_per_master"] == pytest.approx(1000 / 0.075, abs=1)
    text = report(t, t, {"steps_per_s": 1.0, "redis_cpu_per_step": 1.0, "worker_cpu_per_step": 1.0})
    assert "10,000 steps/s per Redis core" in text and "5,000 steps/s per Redis core" in text
