"""The reference model: what a program's run must end as, computed in plain Python.

It follows the documented execution model (Inngest's) without any of stepq's machinery: the function
is re-entered from the top with the results of the steps done so far; sequential code stops at its
first new step; ``group.parallel`` runs each branch up to its first new step, and those steps are all
resolved before the next re-entry (a *round*); a memoized failure raises ``StepError`` where its step
is, which a ``try`` may catch; a ``NonRetriableError`` fails the run at once; a cancelled run stops
where it is.

Some outcomes depend on timing, not on the program: a wait whose event races its timeout, an event
sent just before its wait registered, and whether a step that was running when its run was cancelled
got to record its result. For the waits the model asks an *oracle* (what the run committed, checked
to be one of the allowed outcomes); the others become the ``may`` set of steps that may or may not be
committed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any

from tests.torture.program import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    FUNCTION_RETRIES,
    MAX_STEPS,
    RETRY_AFTER_S,
    SEND_CODE,
    SLEEP_CODE,
    WAIT_TIMEOUT_CODE,
    Op,
    Program,
    body_path,
    branch_path,
    mix,
    name_code,
    seed_of,
    signal_value,
    step_id,
    token_digest,
    value,
)

#: What the run committed for a step (by key name), or None: asked for outcomes that are up to timing
#: (a wait racing its event, the error of a child whose failing steps raced).
Oracle = Callable[[str], Any]

#: Per-step overhead the nominal duration counts (a few Redis round trips and a job hop).
STEP_OVERHEAD_S = 0.02
#: How long the driver takes to send a waited-for event once the wait is registered.
MATCH_LATENCY_S = 0.5


@dataclasses.dataclass(frozen=True, slots=True)
class StepExpect:
    """What a committed step's memo must hold, and how its handler must have been called."""

    name: str  # the step's key name: its id, or ``id:n`` for the n-th repeat
    kind: str  # run, sleep, wait, send, invoke, cancel
    #: ``ok`` (with ``value``), ``err`` (with ``error``), ``null`` (a sleep, a wait that timed out),
    #: ``event`` (a wait that matched: ``tok``), ``sent``, ``child`` (an invoke's output: ``value`` is its
    #: acc), ``nonret`` (a step that raised NonRetriableError: it runs once and is never committed),
    #: ``limit`` (a step past the run's MAX_STEPS: it may have run once, inline, but is never committed)
    memo: str
    value: int | None = None
    error: str | None = None
    tok: str | None = None
    #: For run steps: the attempt that succeeds (``fail``), or the number of attempts when it fails for good.
    attempts: int = 1
    #: An invoke's child program id and ops.
    child: tuple[str, list[Op]] | None = None


@dataclasses.dataclass(slots=True)
class Expected:
    """A run's expected end."""

    status: str  # completed, failed or cancelled
    #: For a completed run: ``{"acc", "trace"}`` (the ``digest`` is checked against the memo's tokens).
    output: dict[str, Any] | None
    #: For a failed or cancelled run: the error names it may end with (one, unless steps raced).
    errors: set[str]
    #: Steps that must be committed, by key name.
    must: dict[str, StepExpect]
    #: Steps that may be committed too (a failure or a cancellation raced them).
    may: dict[str, StepExpect]
    #: For a completed run: the run steps whose tokens make the digest, in program order.
    token_order: list[str]
    #: A rough duration without faults or load, for the bound on when the run must have ended.
    nominal_s: float
    #: Every step the program has (key names), for naming executions of steps that must not run.
    all_steps: set[str]

    def expected_step(self, name: str) -> StepExpect | None:
        return self.must.get(name) or self.may.get(name)


class _Planned(Exception):
    """New steps reached (control flow, like the engine's Interrupt)."""

    def __init__(self, items: list[tuple[str, str, Op, int]]) -> None:
        super().__init__(len(items))
        #: (kind, name, op, acc at the step)
        self.items = items


class _StepFailed(Exception):
    """A memoized failure raised where its step is (the engine's StepError)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class Model:
    """The model of one program (a top-level run or an invoked child)."""

    def __init__(self, program: Program, oracle: Oracle | None = None) -> None:
        self.pid: str = program["pid"]
        self.ops: list[Op] = program["ops"]
        self.oracle = oracle or (lambda name: None)
        self.memo: dict[str, StepExpect] = {}
        self._seen: Counter[str] = Counter()
        self._trace: list[str] = []
        self._tokens: list[str] = []

    # -- the walk: one re-entry ------------------------------------------------------------------

    def _name(self, sid: str) -> str:
        n = self._seen[sid]
        self._seen[sid] += 1
        return sid if n == 0 else f"{sid}:{n}"

    def _ops(self, ops: list[Op], path: str, acc: int) -> int:
        for i, op in enumerate(ops):
            acc = self._op(op, f"{path}{i}", acc)
        return acc

    def _step(self, kind: str, name: str, op: Op, acc: int) -> StepExpect:
        found = self.memo.get(name)
        if found is None:
            raise _Planned([(kind, name, op, acc)])
        return found

    def _op(self, op: Op, path: str, acc: int) -> int:
        kind = op["op"]
        if kind == "run":
            return self._run(self._name(step_id("r", path)), op, acc, path)
        if kind == "loop":
            sid = step_id("l", path)
            for _ in range(op["n"]):
                acc = self._run(self._name(sid), op, acc, path)
            return acc
        if kind == "sleep":
            self._step("sleep", self._name(step_id("s", path)), op, acc)
            self._trace.append(f"s{path}")
            return mix(acc, SLEEP_CODE)
        if kind == "wait":
            got = self._step("wait", self._name(step_id("w", path)), op, acc)
            if got.memo == "event":
                self._trace.append(f"w{path}:m")
                return mix(acc, signal_value(op["tok"]))
            self._trace.append(f"w{path}:t")
            return mix(acc, WAIT_TIMEOUT_CODE)
        if kind == "send":
            self._step("send", self._name(step_id("e", path)), op, acc)
            self._trace.append(f"e{path}")
            return mix(acc, SEND_CODE)
        if kind == "invoke":
            got = self._step("invoke", self._name(step_id("i", path)), op, acc)
            if got.memo == "err":
                assert got.error is not None
                raise _StepFailed(got.error)
            assert got.value is not None
            self._trace.append(f"i{path}")
            return mix(acc, got.value)
        if kind == "par":
            results: list[int] = []
            planned: list[tuple[str, str, Op, int]] = []
            for b, branch in enumerate(op["branches"]):
                try:
                    results.append(self._ops(branch, branch_path(path, b), mix(acc, 1000 + b)))
                except _Planned as stop:
                    planned += stop.items  # the other branches still get to plan theirs
            if planned:
                raise _Planned(planned)
            for r in results:
                acc = mix(acc, r)
            self._trace.append(f"P{path}")
            return acc
        if kind == "try":
            try:
                return self._ops(op["body"], body_path(path), acc)
            except _StepFailed as failed:
                self._trace.append(f"c{path}:{failed.name}")
                return mix(acc, name_code(failed.name))
        if kind == "cancel":
            self._step("cancel", self._name(step_id("k", path)), op, acc)
            raise AssertionError("a cancel op is never passed")  # pragma: no cover
        if kind == "raise":
            return acc  # handled by the caller: it only ever comes last
        raise ValueError(f"unknown op {kind!r}")

    def _run(self, name: str, op: Op, acc: int, path: str) -> int:
        got = self._step("run", name, op, acc)
        if got.memo == "err":
            assert got.error is not None
            raise _StepFailed(got.error)
        assert got.value is not None
        self._tokens.append(name)
        self._trace.append(f"r{path}")
        return mix(acc, got.value)

    # -- resolving a round's new steps ------------------------------------------------------------

    def _resolve(self, kind: str, name: str, op: Op, acc: int) -> tuple[StepExpect | None, float]:
        """What a new step resolves to (None: it fails the run at once) and about how long it takes."""
        if kind == "run":
            return _run_outcome(self.pid, name, op, acc)
        if kind == "sleep":
            return StepExpect(name, kind, "null"), op["ms"] / 1000
        if kind == "send":
            return StepExpect(name, kind, "sent"), STEP_OVERHEAD_S
        if kind == "wait":
            outcome = op["outcome"]
            matched = {"match": True, "timeout": False}.get(outcome)
            if matched is None:  # race or early: whatever the run saw (the checker checks it is allowed)
                matched = isinstance(self.oracle(name), dict)
            took = MATCH_LATENCY_S if outcome == "match" else op["ms"] / 1000
            if matched:
                return StepExpect(name, kind, "event", tok=op["tok"]), took
            return StepExpect(name, kind, "null"), took
        if kind == "invoke":
            cpid = f"{self.pid}/{name}"
            child = Model({"pid": cpid, "ops": op["child"]}).expect()
            took = child.nominal_s + STEP_OVERHEAD_S
            if child.status == "completed":
                assert child.output is not None
                return StepExpect(name, kind, "child", value=child.output["acc"], child=(cpid, op["child"])), took
            error = min(child.errors)
            seen = self.oracle(name)
            if (
                isinstance(seen, dict)
                and isinstance(seen.get("error"), dict)
                and seen["error"].get("name") in child.errors
            ):
                error = seen["error"]["name"]  # one of the errors its racing steps may end it with
            return StepExpect(name, kind, "err", error=error, child=(cpid, op["child"])), took
        raise ValueError(f"cannot resolve {kind!r}")

    # -- the whole run ------------------------------------------------------------------------------

    def _walk(self) -> tuple[str, Any]:
        """One re-entry: ("done", acc), ("planned", items) or ("failed", error name)."""
        self._seen.clear()
        self._trace = []
        self._tokens = []
        try:
            return "done", self._ops(self.ops, "", seed_of(self.pid))
        except _StepFailed as failed:
            return "failed", failed.name
        except _Planned as stop:
            return "planned", stop.items

    def _fails_with(self, memo: dict[str, StepExpect]) -> str | None:
        """The StepError a re-entry with this memo raises, if any."""
        saved = self.memo
        self.memo = memo
        try:
            kind, found = self._walk()
        finally:
            self.memo = saved
        return found if kind == "failed" else None

    def expect(self) -> Expected:
        """Re-enter until the program returns, fails or is cancelled."""
        nominal = 0.0
        everything = _all_steps(self.ops)
        last = self.ops[-1] if self.ops else None
        while True:
            kind, found = self._walk()
            if kind == "failed":
                return self._end("failed", None, {found}, {}, nominal, everything)
            if kind == "planned":
                if found[0][0] == "cancel":
                    _, name, op, acc = found[0]
                    may = {}
                    if op["at"] == "step":  # the slow step was running when the cancel came
                        may[name] = StepExpect(name, "run", "ok", value=value(self.pid, name, acc), attempts=0)
                    return self._end("cancelled", None, {"Cancelled"}, may, nominal, everything)
                if len(self.memo) + len(found) > MAX_STEPS:
                    # Asked for more steps than the run may have: it fails before any is committed.
                    kind, name, _, _ = found[0]
                    may = {name: StepExpect(name, kind, "limit")} if len(found) == 1 else {}
                    return self._end("failed", None, {"LimitExceeded"}, may, nominal, everything)
                before = dict(self.memo)
                resolved = [(self._resolve(k, name, op, acc), name, op) for k, name, op, acc in found]
                nominal += max(took for (_, took), _, _ in resolved) + STEP_OVERHEAD_S
                for (step, _), name, _ in resolved:
                    if step is not None:
                        self.memo[name] = step
                errors = set()
                if any(step is None for (step, _), _, _ in resolved):
                    errors.add("NonRetriableError")
                final = self._fails_with(self.memo) if len(resolved) > 1 else None
                if final is not None:
                    # A planned step's own re-entry may meet a sibling's memoized error before the join
                    # does: the run may fail with the StepError of any failing step of the round.
                    for (step, _), name, _ in resolved:
                        if step is not None and step.memo == "err":
                            early = self._fails_with({**before, name: step})
                            if early is not None:
                                errors.add(early)
                    errors.add(final)
                if errors:
                    # The round's steps ran at once: each may have committed before the run failed.
                    may = {name: step or StepExpect(name, "run", "nonret") for (step, _), name, _ in resolved}
                    self.memo = before
                    return self._end("failed", None, errors, may, nominal, everything)
                continue
            acc = found
            if last is not None and last["op"] == "raise":
                if last["kind"] == "nonret":
                    return self._end("failed", None, {"NonRetriableError"}, {}, nominal, everything)
                if last["n"] > FUNCTION_RETRIES:
                    return self._end("failed", None, {"TortureError"}, {}, nominal, everything)
                nominal += sum(_backoff(k) for k in range(1, last["n"] + 1))
            output = {"acc": acc, "trace": list(self._trace)}
            expected = self._end("completed", output, set(), {}, nominal, everything)
            expected.token_order = list(self._tokens)
            return expected

    def _end(
        self,
        status: str,
        output: dict[str, Any] | None,
        errors: set[str],
        may: dict[str, StepExpect],
        nominal: float,
        everything: set[str],
    ) -> Expected:
        return Expected(status, output, errors, dict(self.memo), may, [], nominal, everything)


def _backoff(failures: int) -> float:
    return float(min(BACKOFF_INITIAL_S * 2 ** (failures - 1), BACKOFF_MAX_S))


def _run_outcome(pid: str, name: str, op: Op, acc: int) -> tuple[StepExpect | None, float]:
    """A run step's end: its value after ``fail`` failed attempts, or its error once retries are spent."""
    fail, retries, err = op.get("fail", 0), op.get("retries", 2), op.get("err", "plain")
    ms = op.get("ms", 0) / 1000
    if op.get("big"):  # a value over the output limit: no retry
        return StepExpect(name, "run", "err", error="OutputTooLarge", attempts=1), ms
    delay = RETRY_AFTER_S if err == "after" else None
    if fail and err == "nonret":
        return None, ms
    if fail <= retries:
        waits = sum(delay if delay is not None else _backoff(k) for k in range(1, fail + 1))
        return StepExpect(name, "run", "ok", value=value(pid, name, acc), attempts=fail), ms * (fail + 1) + waits
    waits = sum(delay if delay is not None else _backoff(k) for k in range(1, retries + 1))
    error = "RetryAfterError" if err == "after" else "TortureError"
    return StepExpect(name, "run", "err", error=error, attempts=retries + 1), ms * (retries + 1) + waits


def _all_steps(ops: list[Op], path: str = "") -> set[str]:
    """Every step key name a program can ask for (children excluded)."""
    out: set[str] = set()
    for i, op in enumerate(ops):
        here = f"{path}{i}"
        kind = op["op"]
        letter = {"run": "r", "sleep": "s", "wait": "w", "send": "e", "invoke": "i", "cancel": "k"}.get(kind)
        if letter is not None:
            out.add(step_id(letter, here))
        elif kind == "loop":
            sid = step_id("l", here)
            out |= {sid if n == 0 else f"{sid}:{n}" for n in range(op["n"])}
        elif kind == "par":
            for b, branch in enumerate(op["branches"]):
                out |= _all_steps(branch, branch_path(here, b))
        elif kind == "try":
            out |= _all_steps(op["body"], body_path(here))
    return out


def expected_digest(tokens: dict[str, str], order: list[str]) -> str:
    """The digest a completed run's output must carry, from the tokens its memo holds."""
    return token_digest([tokens.get(name, "?") for name in order])


def child_programs(program: Program) -> dict[str, Program]:
    """The programs of the children a program may invoke, by their program id (``<pid>/i<path>``)."""
    out: dict[str, Program] = {}

    def visit(pid: str, ops: list[Op], path: str) -> None:
        for i, op in enumerate(ops):
            here = f"{path}{i}"
            if op["op"] == "invoke":
                cpid = f"{pid}/{step_id('i', here)}"
                out[cpid] = {"pid": cpid, "app": program.get("app"), "ops": op["child"]}
                visit(cpid, op["child"], "")
            elif op["op"] == "par":
                for b, branch in enumerate(op["branches"]):
                    visit(pid, branch, branch_path(here, b))
            elif op["op"] == "try":
                visit(pid, op["body"], body_path(here))

    visit(program["pid"], program["ops"], "")
    return out


def memo_oracle(memo: dict[str, Any], key_of: Callable[[str], str]) -> Oracle:
    """An oracle reading a run's memo (step key -> unpacked memo value)."""
    return lambda name: memo.get(key_of(name))
