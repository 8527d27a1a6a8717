"""Issue 2.7: the engine alone (imports only sdk, no Redis): step keys, memo and opcode shapes, divergence,
sync functions."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

import stepq as inngest
from stepq.durations import parse_iso, to_timedelta
from stepq.engine import ExecutionResult, FunctionFailed, FunctionReturned, StepsReported, execute
from stepq.opcodes import Op, Opcode, hash_step_id, memo_data, memo_error
from stepq.replay import ExecutionRequest, FailedStep

client = inngest.Client("t-engine", redis_url="redis://127.0.0.1:1/0")  # never connects
EVENT = inngest.Event(name="test/engine", data={"n": 3}).validated()


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def request(steps: Mapping[str, Any] | None = None, *, stack: list[str] | None = None, **kw: Any) -> ExecutionRequest:
    steps = dict(steps or {})
    return ExecutionRequest(
        event=EVENT,
        events=[EVENT],
        steps=steps,
        run_id="run-1",
        stack=stack if stack is not None else list(steps),
        **kw,
    )


def define(fn_id: str, **options: Any) -> Callable[[Callable[..., Any]], inngest.Function]:
    return client.create_function(id=fn_id, trigger=inngest.TriggerEvent(event=f"test/{fn_id}"), **options)


async def drive(fn: inngest.Function, limit: int = 50) -> tuple[list[Opcode], ExecutionResult]:
    """Re-enter ``fn`` as a runtime would until it stops asking for steps: (opcodes seen, last result)."""
    memo: dict[str, Any] = {}
    seen: list[Opcode] = []
    for _ in range(limit):
        result = await execute(fn, request(memo))
        if not isinstance(result, StepsReported):
            return seen, result
        [op] = result.opcodes
        seen.append(op)
        if op.op is Op.STEP_RUN:
            memo[op.id] = memo_data(op.data)
        elif op.op is Op.STEP_FAILED:
            memo[op.id] = memo_error(op.error or {})
        elif op.op is Op.SLEEP:
            memo[op.id] = None
        else:
            raise AssertionError(f"unexpected opcode {op}")
    raise AssertionError(f"{fn.id} did not finish in {limit} invocations")


# -- step keys ---------------------------------------------------------------------------------------


def test_step_key_is_the_sha1_of_the_step_id() -> None:
    assert hash_step_id("a") == hashlib.sha1(b"a").hexdigest()
    # The example of Inngest's SDK spec §5.1.2.
    assert hash_step_id("my-step-id") == "e7d8a2f140845095749d60246ff1110c9d01d76a"


def _same(i: int) -> int:
    return i


@define("loop-same-id")
async def loop_same_id(ctx: inngest.Context) -> list[int]:
    return [await ctx.step.run("a", _same, i) for i in range(3)]


async def test_repeated_step_ids_are_keyed_id_then_id_colon_n() -> None:
    ops, result = await drive(loop_same_id)

    assert [op.id for op in ops] == [sha1("a"), sha1("a:1"), sha1("a:2")]
    assert [op.to_dict()["userland"] for op in ops] == [
        {"id": "a", "index": None},
        {"id": "a", "index": 1},
        {"id": "a", "index": 2},
    ]
    assert isinstance(result, FunctionReturned)
    assert result.value == [0, 1, 2]


@define("index-taken-by-name")
async def index_taken_by_name(ctx: inngest.Context) -> list[str]:
    return [await ctx.step.run(name, lambda name=name: name) for name in ("a:1", "a", "a")]


async def test_an_index_taken_by_a_step_name_is_skipped() -> None:
    ops, result = await drive(index_taken_by_name)

    assert [op.id for op in ops] == [sha1("a:1"), sha1("a"), sha1("a:2")]
    assert isinstance(result, FunctionReturned)
    assert result.value == ["a:1", "a", "a"]


# -- memo shapes -------------------------------------------------------------------------------------


def test_memo_values_have_inngest_shapes() -> None:
    assert memo_data({"rows": 3}) == {"data": {"rows": 3}}
    error = {"name": "ValueError", "message": "bad", "stack": "Traceback..."}
    assert memo_error(error) == {"error": error}


@define("reads-memos")
async def reads_memos(ctx: inngest.Context) -> dict[str, Any]:
    data = await ctx.step.run("data", lambda: "not run")
    nothing = await ctx.step.run("nothing", lambda: "not run")
    try:
        await ctx.step.run("failed", lambda: "not run")
        caught = None
    except inngest.StepError as err:
        caught = [err.name, err.message, err.stack, err.step_id]
    await ctx.step.sleep("nap", "1h")
    return {"data": data, "nothing": nothing, "caught": caught, "after_sleep": True}


async def test_memoized_values_are_returned_to_user_code() -> None:
    steps = {
        sha1("data"): {"data": {"rows": [1, 2]}},
        sha1("nothing"): {"data": None},
        sha1("failed"): {"error": {"name": "KeyError", "message": "gone", "stack": "tb"}},
        sha1("nap"): None,
    }

    result = await execute(reads_memos, request(steps))

    assert isinstance(result, FunctionReturned)
    assert result.value == {
        "data": {"rows": [1, 2]},
        "nothing": None,
        "caught": ["KeyError", "gone", "tb", "failed"],
        "after_sleep": True,
    }
    assert result.warnings == []


# -- opcode shapes -----------------------------------------------------------------------------------


@define("one-step")
async def one_step(ctx: inngest.Context) -> None:
    await ctx.step.run("fetch", lambda: {"rows": 3})


async def test_step_run_opcode_shape() -> None:
    result = await execute(one_step, request())

    assert isinstance(result, StepsReported)
    [op] = result.opcodes
    assert op.to_dict() == {
        "op": "StepRun",
        "id": sha1("fetch"),
        "name": "fetch",
        "displayName": "fetch",
        "data": {"rows": 3},
        "userland": {"id": "fetch", "index": None},
    }


async def test_step_planned_opcode_when_immediate_execution_is_disabled() -> None:
    result = await execute(one_step, request(disable_immediate_execution=True))

    assert isinstance(result, StepsReported)
    [op] = result.opcodes
    shape = op.to_dict()
    assert shape["op"] == "StepPlanned"
    assert (shape["id"], shape["displayName"]) == (sha1("fetch"), "fetch")
    assert "data" not in shape


@define("parallel")
async def parallel(ctx: inngest.Context) -> tuple[Any, ...]:
    return await ctx.group.parallel([lambda: ctx.step.run("left", lambda: 1), lambda: ctx.step.run("right", lambda: 2)])


async def test_parallel_steps_are_reported_as_step_planned() -> None:
    result = await execute(parallel, request())

    assert isinstance(result, StepsReported)
    assert [(op.op, op.id) for op in result.opcodes] == [
        (Op.STEP_PLANNED, sha1("left")),
        (Op.STEP_PLANNED, sha1("right")),
    ]


@define("always-fails", retries=2)
async def always_fails(ctx: inngest.Context) -> None:
    def boom() -> None:
        raise ValueError("boom")

    await ctx.step.run("boom", boom)


@pytest.mark.parametrize(("attempt", "op"), [(0, "StepError"), (1, "StepError"), (2, "StepFailed")])
async def test_step_error_then_step_failed_on_the_last_attempt(attempt: int, op: str) -> None:
    result = await execute(always_fails, request(attempt=attempt))

    assert isinstance(result, StepsReported)
    [opcode] = result.opcodes
    shape = opcode.to_dict()
    assert shape["op"] == op
    assert (shape["id"], shape["displayName"]) == (sha1("boom"), "boom")
    assert set(shape["error"]) == {"name", "message", "stack"}
    assert (shape["error"]["name"], shape["error"]["message"]) == ("ValueError", "boom")
    assert "raise ValueError" in shape["error"]["stack"]


@define("naps")
async def naps(ctx: inngest.Context) -> None:
    await ctx.step.sleep("short", "2s")
    await ctx.step.sleep("long", dt.timedelta(days=2))
    await ctx.step.sleep("odd", 90_000)  # an int is milliseconds, as in inngest-py
    await ctx.step.sleep("brief", 1500)


async def test_sleep_opcode_name_is_the_duration_string() -> None:
    ops, result = await drive(naps)

    shapes = [op.to_dict() for op in ops]
    assert [(s["op"], s["id"], s["displayName"]) for s in shapes] == [
        ("Sleep", sha1("short"), "short"),
        ("Sleep", sha1("long"), "long"),
        ("Sleep", sha1("odd"), "odd"),
        ("Sleep", sha1("brief"), "brief"),
    ]
    assert [s["name"] for s in shapes] == ["2s", "2d", "90s", "1500ms"]
    assert [s["opts"] for s in shapes] == [{"duration": s["name"]} for s in shapes]
    assert [to_timedelta(s["name"]) for s in shapes] == [
        dt.timedelta(seconds=2),
        dt.timedelta(days=2),
        dt.timedelta(seconds=90),
        dt.timedelta(milliseconds=1500),
    ]
    assert "data" not in shapes[0]
    assert isinstance(result, FunctionReturned)


@define("sleeps-until")
async def sleeps_until(ctx: inngest.Context) -> None:
    await ctx.step.sleep_until("until", dt.datetime.fromisoformat(ctx.event.data["until"]))


async def test_sleep_until_never_asks_to_wake_before_the_given_moment() -> None:
    tz = dt.timezone(dt.timedelta(hours=-3))
    until = dt.datetime(2030, 1, 2, 3, 4, 5, 999_600, tzinfo=tz)
    event = inngest.Event(name="test/sleeps-until", data={"until": until.isoformat()}).validated()

    result = await execute(sleeps_until, ExecutionRequest(event=event, events=[event], steps={}, run_id="run-1"))

    assert isinstance(result, StepsReported)
    [op] = result.opcodes
    assert op.op is Op.SLEEP
    assert op.name is not None
    assert parse_iso(op.name) >= until


# -- errors at the function level ---------------------------------------------------------------------


@define("non-retriable-in-step")
async def non_retriable_in_step(ctx: inngest.Context) -> None:
    def charge() -> None:
        raise inngest.NonRetriableError("card declined")

    await ctx.step.run("charge", charge)


@define("non-retriable-rewrapped")
def non_retriable_rewrapped(ctx: inngest.ContextSync) -> None:
    def charge() -> None:
        raise inngest.NonRetriableError("card declined")

    ctx.step.run("fetch", lambda: 1)
    try:
        ctx.step.run("charge", charge)
    except inngest.NonRetriableError as exc:
        raise inngest.NonRetriableError(f"checkout: {exc}") from exc


@define("non-retriable-outside")
async def non_retriable_outside(ctx: inngest.Context) -> None:
    await ctx.step.run("fetch", lambda: 1)
    raise inngest.NonRetriableError("no card")


async def test_non_retriable_error_in_a_step_fails_the_function_naming_the_step() -> None:
    result = await execute(non_retriable_in_step, request())

    assert isinstance(result, FunctionFailed)
    assert result.retriable is False
    assert (result.error["name"], result.error["message"]) == ("NonRetriableError", "card declined")
    assert result.step == FailedStep(sha1("charge"), "charge")
    # user code that catches it and raises another error fails the function on its own account
    _, rewrapped = await drive(non_retriable_rewrapped)
    assert isinstance(rewrapped, FunctionFailed) and rewrapped.error["message"] == "checkout: card declined"
    assert (rewrapped.retriable, rewrapped.step) == (False, None)
    # as does one raised by the function's own code, after a step
    _, outside = await drive(non_retriable_outside)
    assert isinstance(outside, FunctionFailed) and (outside.error["message"], outside.step) == ("no card", None)


@define("retry-after-in-step")
async def retry_after_in_step(ctx: inngest.Context) -> None:
    def call() -> None:
        raise inngest.RetryAfterError("slow down", 1500)  # ms, as in inngest-py

    await ctx.step.run("call", call)


async def test_retry_after_error_in_a_step_sets_the_retry_delay() -> None:
    result = await execute(retry_after_in_step, request())

    assert isinstance(result, StepsReported)
    [op] = result.opcodes
    assert op.op is Op.STEP_ERROR
    assert result.retry_after == dt.timedelta(seconds=1.5)


# -- divergence --------------------------------------------------------------------------------------


@define("step-from-event")
async def step_from_event(ctx: inngest.Context) -> str:
    first: str = await ctx.step.run("first", lambda: "one")
    await ctx.step.run(f"charge-{ctx.event.data['n']}", lambda: "charged")
    return first


async def test_reentry_that_skips_a_memoized_step_fails_naming_the_step_and_its_position() -> None:
    # The run's history says "charge-7" ran second; the code now asks for "charge-3".
    stack = [sha1("first"), sha1("charge-7")]
    steps = {stack[0]: {"data": "one"}, stack[1]: {"data": "charged"}}
    names = {stack[0]: "first", stack[1]: "charge-7"}

    result = await execute(step_from_event, request(steps, stack=stack, step_names=names))

    assert isinstance(result, FunctionFailed)
    assert result.retriable is False
    assert result.error["name"] == "NonDeterminismError"
    message = result.error["message"]
    assert "'charge-7'" in message
    assert "position 2 of 2" in message
    assert "'charge-3'" in message


@define("returns-early")
async def returns_early(ctx: inngest.Context) -> str:
    return "done"


async def test_function_returning_without_reaching_its_memoized_steps_is_reported() -> None:
    stack = [sha1("gone")]

    result = await execute(returns_early, request({stack[0]: {"data": 1}}, stack=stack, step_names={stack[0]: "gone"}))

    assert isinstance(result, FunctionReturned)
    [warning] = result.warnings
    assert "'gone'" in warning
    assert "position 1 of 1" in warning


# -- plain def functions -----------------------------------------------------------------------------


@define("sync-function")
def sync_function(ctx: inngest.ContextSync) -> dict[str, Any]:
    total = 0
    for i in range(3):
        total += ctx.step.run("add", _same, i + 1)
    ctx.step.sleep("rest", "1s")
    return {"total": total, "event": ctx.event.name}


async def test_plain_def_functions_run_with_sync_step_tools() -> None:
    assert not sync_function.is_async

    ops, result = await drive(sync_function)

    assert [(op.op.value, op.id) for op in ops] == [
        ("StepRun", sha1("add")),
        ("StepRun", sha1("add:1")),
        ("StepRun", sha1("add:2")),
        ("Sleep", sha1("rest")),
    ]
    assert isinstance(result, FunctionReturned)
    assert result.value == {"total": 6, "event": "test/engine"}


def test_the_engine_imports_no_redis_or_arq(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, stepq; print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('redis', 'arq') or m.startswith(('stepq.runtime', 'stepq.workers'))))"
    )
    # Not from the repository's root, whose sdk/ and runtime/ folders would import as `sdk`, `runtime`.
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


async def test_a_step_retry_policy_decides_error_or_failed_and_travels_in_the_opcode() -> None:
    client = inngest.Client("engine-policy")

    @client.create_function(id="policy", trigger=inngest.TriggerEvent(event="test/policy"), retries=4)
    async def policy(ctx: inngest.Context) -> None:
        def boom() -> None:
            raise ValueError("boom")

        await ctx.step.run("boom", boom, retries=1, backoff=inngest.Backoff.of("2s"))

    event = inngest.Event(name="test/policy").validated()
    ops = []
    for attempt in (0, 1):
        request = ExecutionRequest(event=event, events=[event], steps={}, run_id="r", attempt=attempt)
        result = await execute(policy, request)
        assert isinstance(result, StepsReported)
        ops.append(result.opcodes[0])
    assert [op.op for op in ops] == [Op.STEP_ERROR, Op.STEP_FAILED]
    assert ops[0].opts is not None and ops[0].opts["retries"] == 1
    assert ops[0].opts["backoff"]["initial"] == 2.0


async def test_ctx_logger_lines_carry_the_run_and_function_and_are_quiet_while_replaying() -> None:
    from structlog.testing import capture_logs

    @define("logs")
    async def logs(ctx: inngest.Context) -> str:
        ctx.logger.info("before", n=1)
        await ctx.step.run("a", lambda: "a")
        ctx.logger.bind(phase="after").warning("after")
        return "done"

    with capture_logs() as first:
        await execute(logs, request())
    with capture_logs() as second:
        await execute(logs, request({sha1("a"): memo_data("a")}))

    assert first == [{"event": "before", "n": 1, "run_id": "run-1", "function": "logs", "log_level": "info"}]
    assert second == [
        {"event": "after", "phase": "after", "run_id": "run-1", "function": "logs", "log_level": "warning"}
    ]
