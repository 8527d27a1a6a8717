"""A torture run's report: its figures, its violations, and a failure message that reproduces it."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from tests.torture.faults import FaultLog
from tests.torture.invariants import Tally, Violation
from tests.torture.program import Program


@dataclasses.dataclass(slots=True)
class Report:
    seed: int
    #: The command that reruns this seed.
    command: str
    directory: Path
    tally: Tally = dataclasses.field(default_factory=Tally)
    violations: list[Violation] = dataclasses.field(default_factory=list)
    programs: dict[str, Program] = dataclasses.field(default_factory=dict)
    faults: FaultLog = dataclasses.field(default_factory=FaultLog)
    #: Counts of the workers' log events worth knowing (refusals, lost leases, outages...).
    notable: Counter[str] = dataclasses.field(default_factory=Counter)
    elapsed_s: float = 0.0
    memory: str = ""
    events_sent: int = 0
    cancels: int = 0
    #: Script calls seen, by script, when the slot audit ran.
    script_calls: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Runs the driver replayed or resumed (``Config.forks``).
    forks: list[str] = dataclasses.field(default_factory=list)

    def figures(self) -> str:
        t = self.tally
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(t.statuses.items()))
        notable = ", ".join(f"{k} {v}" for k, v in sorted(self.notable.items())) or "none"
        return (
            f"seed {self.seed}: {t.runs} runs ({statuses}), {t.steps} steps committed, "
            f"{t.executions} step executions, {t.duplicate_executions} duplicate executions, "
            f"{self.events_sent} events sent, {self.cancels} cancels; faults: {self.faults.summary()}; "
            f"worker log events: {notable}; {self.memory}; {len(self.violations)} violations; "
            f"{self.elapsed_s:.0f} s"
        )

    def failure_message(self, limit: int = 12) -> str:
        by_kind = Counter(v.invariant for v in self.violations)
        lines = [
            f"torture run failed: seed {self.seed} (reproduce: {self.command})",
            self.figures(),
            "violations by invariant: " + ", ".join(f"{k} {n}" for k, n in by_kind.most_common()),
        ]
        for v in self.violations[:limit]:
            lines.append(v.render(self.programs.get(v.pid)))
        if len(self.violations) > limit:
            lines.append(f"... {len(self.violations) - limit} more in {self.directory / 'violations.txt'}")
        for at, name, tail in self.faults.deaths[:3]:
            lines.append(f"worker {name} died on its own at {at} s:\n{tail[-1500:]}")
        lines.append(f"process logs: {self.directory}")
        return "\n".join(lines)

    def write(self) -> None:
        """``violations.txt`` in the run's directory: the figures, the faults' timeline, every violation."""
        with (self.directory / "violations.txt").open("w") as f:
            f.write(self.figures() + "\n\nfaults:\n")
            f.write("\n".join(self.faults.around(0, float("inf"))) + "\n\n")
            for v in self.violations:
                f.write(v.render(self.programs.get(v.pid)) + "\n\n")
