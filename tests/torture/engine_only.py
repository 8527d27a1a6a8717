"""Runs programs through the pure engine (``stepq.engine.execute``) alone: no Redis, no workers, no faults.

What a runtime does between invocations is done here in memory, following the documented model:
commit a step's result, retry a failed attempt with its policy, plan parallel steps and run each
with ``target_step``, end a sleep, resolve a wait by the program's intended outcome (a race or an
early event resolves as a timeout), run an invoked child to its end, cancel at a ``cancel`` op.

It checks the harness itself (the model and the interpreter must agree on thousands of programs in
seconds) and the engine's semantics, so a failure of the real torture test is known to come from the
runtime, the workers or the faults, not from the program's meaning.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import stepq
from stepq.engine import ExecutionResult, FunctionFailed, FunctionReturned, execute
from stepq.function import Function
from stepq.opcodes import Op, Opcode
from stepq.replay import ExecutionRequest
from tests.torture import interpreter
from tests.torture.interpreter import Interpreter, define
from tests.torture.invariants import Execution, RunSnapshot
from tests.torture.program import MAX_OUTPUT_BYTES, MAX_STEPS, SIGNAL, Program, signal_value, walk


class MemoryRecorder(interpreter.Recorder):
    """Execution records kept in this process."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[str, list[str]] = defaultdict(list)

    def record_sync(self, pid: str, entry: str) -> None:
        self.entries[pid].append(entry)

    async def record(self, pid: str, entry: str) -> None:
        self.entries[pid].append(entry)


class MemoryTransport:
    """Accepts the events ``step.send_event`` sends and gives them ids; nothing listens."""

    def __init__(self) -> None:
        self._ids = itertools.count()

    async def send(self, events: Sequence[stepq.Event]) -> list[str]:
        return [f"ev{next(self._ids)}" for _ in events]

    def send_sync(self, events: Sequence[stepq.Event]) -> list[str]:
        return [f"ev{next(self._ids)}" for _ in events]

    async def aclose(self) -> None:
        return None


class EngineOnly:
    """Owns the functions and the records; ``run(program)`` returns the snapshots of the run and its children."""

    def __init__(self) -> None:
        self.client = stepq.Client("t-torture-engine", transport=MemoryTransport())
        self.main, self.child = define(self.client, "torture-engine")
        self.recorder = MemoryRecorder()
        self._runs = itertools.count()

    def executions(self, pid: str) -> list[Execution]:
        return [Execution.parse(e) for e in self.recorder.entries.get(pid, [])]

    async def run(self, program: Program) -> list[RunSnapshot]:
        saved = interpreter.RECORDER, Interpreter.time_scale
        interpreter.RECORDER, Interpreter.time_scale = self.recorder, 0.0
        try:
            outcomes = {op["tok"]: op["outcome"] for _, op in walk(program["ops"]) if op["op"] == "wait"}
            snaps: list[RunSnapshot] = []
            await self._run(self.main, {"pid": program["pid"], "ops": program["ops"]}, outcomes, snaps)
            return snaps
        finally:
            interpreter.RECORDER, Interpreter.time_scale = saved

    async def _run(
        self, fn: Function, data: dict[str, Any], waits: dict[str, str], snaps: list[RunSnapshot]
    ) -> RunSnapshot:
        run_id = f"run{next(self._runs)}"
        event = stepq.Event(name=fn.event_names[0], data=data).validated()
        memo: dict[str, Any] = {}
        stack: list[str] = []
        snap = RunSnapshot(run_id, data["pid"], "running", None, None, memo, stack)
        snaps.append(snap)

        def commit(key: str, value: Any) -> None:
            assert key not in memo, f"{key} committed twice"
            memo[key] = value
            stack.append(key)

        async def call(attempt: int, target: str | None = None) -> ExecutionResult:
            request = ExecutionRequest(
                event,
                [event],
                dict(memo),
                run_id,
                attempt,
                list(stack),
                target_step=target,
                max_output_bytes=MAX_OUTPUT_BYTES,
            )
            return await execute(fn, request)

        def end(status: str, output: Any = None, error: Any = None) -> RunSnapshot:
            snap.status, snap.output, snap.error = status, output, error
            return snap

        attempt = 0
        for _ in range(10_000):
            result = await call(attempt)
            if isinstance(result, FunctionReturned):
                return end("completed", output=result.value)
            if isinstance(result, FunctionFailed):
                if result.retriable and attempt + 1 < fn.max_attempts:
                    attempt += 1
                    continue
                return end("failed", error=result.error)
            ops = result.opcodes
            if len(stack) + len(ops) > MAX_STEPS:  # as the runtime checks every answer
                return end("failed", error={"name": "LimitExceeded", "message": "over MAX_STEPS", "stack": ""})
            if any(op.step_id.startswith("k") for op in ops):
                if ops[0].op is Op.STEP_RUN:  # the slow step of a cancel at "step" ran: it may commit
                    commit(ops[0].id, {"data": ops[0].data})
                return end("cancelled", error={"name": "Cancelled", "message": "by the engine-only runner"})
            if len(ops) == 1 and ops[0].op in (Op.STEP_RUN, Op.STEP_ERROR, Op.STEP_FAILED):
                op = ops[0]
                if op.op is Op.STEP_ERROR and attempt + 1 < _max_attempts(op, fn):
                    attempt += 1
                    continue
                commit(op.id, {"data": op.data} if op.op is Op.STEP_RUN else {"error": op.error})
                attempt = 0
                continue
            for op in ops:
                failed = await self._resolve(fn, op, call, commit, waits, snaps)
                if failed is not None:
                    return end("failed", error=failed)
            attempt = 0
        raise AssertionError(f"{data['pid']} did not end in 10,000 invocations")

    async def _resolve(
        self, fn: Function, op: Opcode, call: Any, commit: Any, waits: dict[str, str], snaps: list[RunSnapshot]
    ) -> dict[str, Any] | None:
        """Resolve one reported step; returns the run's error if it fails the run."""
        if op.op is Op.STEP_PLANNED:
            attempt = 0
            while True:
                result = await call(attempt, op.id)
                if isinstance(result, FunctionFailed):
                    return result.error  # a NonRetriableError in the planned step
                assert not isinstance(result, FunctionReturned), f"planned step {op.step_id} returned"
                [done] = result.opcodes
                if done.op is Op.STEP_ERROR and attempt + 1 < _max_attempts(done, fn):
                    attempt += 1
                    continue
                commit(op.id, {"data": done.data} if done.op is Op.STEP_RUN else {"error": done.error})
                return None
        if op.op is Op.SLEEP:
            commit(op.id, None)
        elif op.op is Op.WAIT_FOR_EVENT:
            condition = str((op.opts or {}).get("if", ""))
            tok = condition.split('"')[1]
            if waits.get(tok) == "match":
                commit(
                    op.id,
                    {"name": SIGNAL, "data": {"tok": tok, "v": signal_value(tok)}, "id": "x", "ts": 1, "user": {}},
                )
            else:
                commit(op.id, None)
        elif op.op is Op.INVOKE_FUNCTION:
            payload = (op.opts or {}).get("payload") or {}
            child = await self._run(self.child, payload["data"], waits, snaps)
            commit(op.id, {"data": child.output} if child.status == "completed" else {"error": child.error})
        else:
            raise AssertionError(f"unexpected opcode {op}")
        return None


def _max_attempts(op: Opcode, fn: Function) -> int:
    retries = (op.opts or {}).get("retries")
    return retries + 1 if isinstance(retries, int) else fn.max_attempts
