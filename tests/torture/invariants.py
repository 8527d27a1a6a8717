"""The invariants every run must satisfy, checked against its model; each violation names the run,
its program and what differs.

``check_run`` compares one ended run's snapshot (status, output or error, memo, stack) and the
executions its step handlers recorded with the model's expectation. The driver adds the checks that
need the whole cluster (runs that never ended, children against their parents, leftovers in queues).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter, defaultdict
from typing import Any

from tests.torture.model import Expected, StepExpect, expected_digest
from tests.torture.program import Program, describe


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class Execution:
    """One call of a step handler, as the handler recorded it."""

    name: str
    attempt: int
    token: str
    os_pid: int

    @classmethod
    def parse(cls, raw: str) -> Execution:
        name, attempt, token, os_pid = raw.rsplit("|", 3)
        return cls(name, int(attempt), token, int(os_pid))


@dataclasses.dataclass(slots=True)
class RunSnapshot:
    """A run's state as read from Redis when it ended."""

    run_id: str
    pid: str
    status: str
    output: Any
    error: Any
    memo: dict[str, Any]  # step key -> memo value (unpacked)
    stack: list[str]
    created_ms: int = 0
    ended_ms: int | None = None
    #: Leftovers found when it ended: a pending set, waits, timers, queued jobs.
    leftovers: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    pid: str
    run_id: str
    detail: str

    def render(self, program: Program | None) -> str:
        shape = (
            f"\n    program: {describe(program['ops'])}\n    json: {json.dumps(program, separators=(',', ':'))}"
            if program
            else ""
        )
        return f"[{self.invariant}] {self.pid} (run {self.run_id}): {self.detail}{shape}"


@dataclasses.dataclass(slots=True)
class Tally:
    """Figures over all runs checked."""

    runs: int = 0
    steps: int = 0
    executions: int = 0
    duplicate_executions: int = 0
    statuses: Counter[str] = dataclasses.field(default_factory=Counter)

    def add(self, other: Tally) -> None:
        self.runs += other.runs
        self.steps += other.steps
        self.executions += other.executions
        self.duplicate_executions += other.duplicate_executions
        self.statuses.update(other.statuses)


def _error_name(error: Any) -> str | None:
    if isinstance(error, dict):
        return str(error.get("name"))
    return None if error is None else repr(error)


def _memo_problem(step: StepExpect, memo: Any, runs: dict[str, list[Execution]]) -> str | None:
    """Why a committed memo is not what the model says, or None."""
    if step.memo == "ok":
        data = memo.get("data") if isinstance(memo, dict) and len(memo) == 1 else None
        if not isinstance(data, dict) or data.get("v") != step.value:
            return f"memo {memo!r}, expected data.v={step.value}"
        if step.kind == "run" and data.get("a") != step.attempts:
            return (
                f"committed by attempt {data.get('a')}, but attempts before {step.attempts} fail and none after succeed"
            )
        tokens = {e.token for e in runs.get(step.name, []) if e.attempt == data.get("a")}
        if data.get("x") not in tokens:
            return f"committed token {data.get('x')} is not one of its recorded executions {sorted(tokens)}"
        return None
    if step.memo == "nonret":
        return "the step raised NonRetriableError, yet a result is committed"
    if step.memo == "limit":
        return "the step goes past the run's step limit, yet a result is committed"
    if step.memo == "err":
        error = memo.get("error") if isinstance(memo, dict) and len(memo) == 1 else None
        if not isinstance(error, dict) or error.get("name") != step.error:
            return f"memo {memo!r}, expected an error named {step.error}"
        return None
    if step.memo == "null":
        return None if memo is None else f"memo {memo!r}, expected null (a sleep's end or a wait's timeout)"
    if step.memo == "event":
        data = memo.get("data") if isinstance(memo, dict) else None
        if not isinstance(data, dict) or data.get("tok") != step.tok:
            return f"memo {memo!r}, expected the event with tok {step.tok}"
        return None
    if step.memo == "sent":
        data = memo.get("data") if isinstance(memo, dict) and len(memo) == 1 else None
        if not (isinstance(data, list) and len(data) == 1 and isinstance(data[0], str)):
            return f"memo {memo!r}, expected the sent event's id"
        return None
    if step.memo == "child":
        data = memo.get("data") if isinstance(memo, dict) and len(memo) == 1 else None
        if not isinstance(data, dict) or data.get("acc") != step.value:
            return f"memo {memo!r}, expected the child's output with acc={step.value}"
        return None
    return f"unknown expectation {step.memo}"


def check_run(snap: RunSnapshot, expected: Expected, executions: list[Execution]) -> tuple[list[Violation], Tally]:
    """Every per-run invariant; returns the violations and the run's figures."""
    out: list[Violation] = []

    def bad(invariant: str, detail: str) -> None:
        out.append(Violation(invariant, snap.pid, snap.run_id, detail))

    tally = Tally(runs=1, steps=len(snap.stack), executions=len(executions))
    tally.statuses[snap.status] += 1
    # -- the end: status, output or error
    if snap.status != expected.status:
        bad(
            "status",
            f"ended {snap.status} (error {_error_name(snap.error)}, output {snap.output!r}); "
            f"the model says {expected.status} ({' or '.join(sorted(expected.errors)) or 'no error'})",
        )
    elif snap.status == "completed":
        assert expected.output is not None
        got = snap.output if isinstance(snap.output, dict) else {}
        if got.get("trace") != expected.output["trace"]:
            mine, theirs = got.get("trace") or [], expected.output["trace"]
            first = next(
                (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), min(len(mine), len(theirs))
            )
            bad(
                "output",
                f"trace differs from the model's at entry {first}: "
                f"{mine[first : first + 4]} vs {theirs[first : first + 4]}",
            )
        elif got.get("acc") != expected.output["acc"]:
            bad("output", f"acc {got.get('acc')} but the model computes {expected.output['acc']} (same trace)")
    elif snap.status in ("failed", "cancelled") and _error_name(snap.error) not in expected.errors:
        bad(
            "error",
            f"{snap.status} with {_error_name(snap.error)}: {snap.error!r}; "
            f"the model says {' or '.join(sorted(expected.errors))}",
        )

    # -- each step committed once: the stack and the memo agree, no key twice
    dup = [k for k, n in Counter(snap.stack).items() if n > 1]
    if dup:
        bad("exactly-once", f"step keys committed more than once in the stack: {dup}")
    if set(snap.stack) != set(snap.memo):
        only_stack, only_memo = sorted(set(snap.stack) - set(snap.memo)), sorted(set(snap.memo) - set(snap.stack))
        bad("exactly-once", f"stack and memo disagree: only in stack {only_stack}, only in memo {only_memo}")

    names = {sha1(name): name for name in expected.all_steps}
    committed: dict[str, Any] = {}
    for key, memo in snap.memo.items():
        name = names.get(key)
        if name is None:
            bad("steps", f"memo holds a step key {key} that the program never asks for")
        else:
            committed[name] = memo
    by_name: dict[str, list[Execution]] = defaultdict(list)
    for e in executions:
        by_name[e.name].append(e)

    # -- the committed set equals the model's (up to what timing may add)
    missing = sorted(set(expected.must) - set(committed))
    extra = sorted(set(committed) - set(expected.must) - set(expected.may))
    if missing and snap.status == expected.status:
        bad("steps", f"steps the model says were committed are not: {missing}")
    if extra:
        bad("steps", f"steps committed that the model says must not be: {extra}")
    for name, memo in committed.items():
        step = expected.expected_step(name)
        if step is None:
            continue
        problem = _memo_problem(step, memo, by_name)
        if problem is not None:
            bad("memo", f"step {name}: {problem}")

    # -- completed runs: every re-entry saw the committed results
    if snap.status == "completed" == expected.status:
        tokens = {}
        for name in expected.token_order:
            memo = committed.get(name)
            if isinstance(memo, dict) and isinstance(memo.get("data"), dict):
                tokens[name] = str(memo["data"].get("x"))
        want = expected_digest(tokens, expected.token_order)
        if isinstance(snap.output, dict) and snap.output.get("digest") != want:
            bad("output", f"digest {snap.output.get('digest')} is not that of the committed tokens ({want})")

    # -- executions: only steps that may run, attempts as the model says
    allowed = {**expected.may, **expected.must}
    for name, runs in by_name.items():
        step = allowed.get(name)
        if step is None:
            bad("executions", f"step {name} executed {len(runs)} time(s) but the run must never reach it")
            continue
        if step.kind != "run":
            continue
        last = {"ok": step.attempts, "nonret": 0, "limit": 0}.get(step.memo, step.attempts - 1)
        beyond = sorted({e.attempt for e in runs if e.attempt > last})
        if beyond:
            bad("executions", f"step {name} executed attempt(s) {beyond} after attempt {last} ended it")
        if name in committed and step.memo in ("ok", "err"):
            absent = sorted(set(range(last + 1)) - {e.attempt for e in runs})
            if absent:
                bad("executions", f"step {name} committed without executing attempt(s) {absent}")
        per_attempt = Counter(e.attempt for e in runs)
        tally.duplicate_executions += sum(n - 1 for n in per_attempt.values())
    return out, tally


def leftovers_violations(snap: RunSnapshot) -> list[Violation]:
    return [Violation("leftovers", snap.pid, snap.run_id, item) for item in snap.leftovers]
