"""The workers' structured logs, indexed by run: what a failure message quotes about a run."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tests.helpers import LoggedProcess

#: Log events of the workers worth counting in the report.
NOTABLE = (
    "commit.refused",
    "fan_out.refused",
    "finish.refused",
    "lease.lost",
    "job.internal_error",
    "job.ended_with_error",
    "job.redis_unavailable",
    "redis.unavailable",
    "timer.revived",
)


class WorkerLogs:
    """Every JSON log line of the given processes, read once, by run id."""

    def __init__(self, processes: Sequence[LoggedProcess]) -> None:
        self.by_run: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
        self.counts: Counter[str] = Counter()
        for process in processes:
            for entry in process.logs():
                event = str(entry.get("event", ""))
                if event in NOTABLE:
                    self.counts[event] += 1
                run_id = entry.get("run_id") or str(entry.get("job_id", "")).split(":")[0]
                if run_id:
                    stamp = str(entry.get("timestamp", ""))
                    self.by_run.setdefault(str(run_id), []).append((stamp, process.name, entry))
        for lines in self.by_run.values():
            lines.sort(key=lambda line: line[0])

    def lines(self, run_id: str, limit: int = 8) -> str:
        """The last log lines about a run, one string."""
        drop = ("run_id", "logger", "level", "function")
        shown = [
            f"{name}: {json.dumps({k: v for k, v in e.items() if k not in drop})}"
            for _, name, e in self.by_run.get(run_id, [])[-limit:]
        ]
        return "last log lines: " + (" | ".join(shown) if shown else "none")

    def last_invocation(self, run_id: str) -> float | None:
        """When the run's last invocation was logged (else its last line), as a Unix time."""
        lines = self.by_run.get(run_id, [])
        stamps = [t for t, _, e in lines if t and e.get("event") == "invocation"] or [t for t, _, _ in lines if t]
        if not stamps:
            return None
        return dt.datetime.fromisoformat(max(stamps).replace("Z", "+00:00")).timestamp()
