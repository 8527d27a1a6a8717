"""Durations as inngest-py takes them: a bare int is milliseconds everywhere users give one, a float
is refused naming the parameter, strings ("500ms", "1h30m") and timedeltas work; the wire carries
Inngest's duration strings. Engine only: no Redis."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

import stepq as inngest
from stepq.durations import DurationLike, parse_duration, to_duration_str, to_timedelta
from stepq.engine import FunctionFailed, StepsReported, execute
from stepq.opcodes import Op
from stepq.replay import ExecutionRequest
from stepq.retry import Backoff

client = inngest.Client("t-durations", redis_url="redis://127.0.0.1:1/0")  # never connects


def define(fn_id: str, **options: Any) -> Callable[[Callable[..., Any]], inngest.Function]:
    return client.create_function(id=fn_id, trigger=inngest.TriggerEvent(event=f"test/{fn_id}"), **options)


def request(data: dict[str, Any] | None = None) -> ExecutionRequest:
    event = inngest.Event(name="test/durations", data=data or {}).validated()
    return ExecutionRequest(event=event, events=[event], steps={}, run_id="run-1", stack=[])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1000, dt.timedelta(seconds=1)),
        (1500, dt.timedelta(milliseconds=1500)),
        (0, dt.timedelta(0)),
        (dt.timedelta(minutes=5), dt.timedelta(minutes=5)),
        ("500ms", dt.timedelta(milliseconds=500)),
        ("30s", dt.timedelta(seconds=30)),
        ("5m", dt.timedelta(minutes=5)),
        ("1h30m", dt.timedelta(hours=1, minutes=30)),
        ("7d", dt.timedelta(days=7)),
    ],
)
def test_an_int_is_milliseconds_and_strings_and_timedeltas_keep_their_meaning(
    value: DurationLike, expected: dt.timedelta
) -> None:
    assert to_timedelta(value) == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (2.5, ["the float 2.5", "milliseconds", "inngest-py", "2500", "timedelta(seconds=2.5)", "'2500ms'"]),
        (float("nan"), ["the float nan", "milliseconds", "timedelta", "'30s'"]),
        (True, ["bool", "milliseconds"]),
        (-1, ["negative"]),
        ("soon", ["'soon'", "'30s'"]),
        (None, ["NoneType", "milliseconds"]),
        (10**30, ["too long"]),
    ],
)
def test_a_float_or_other_bad_value_is_refused_naming_the_parameter_and_the_fix(value: Any, says: list[str]) -> None:
    with pytest.raises(ValueError) as caught:
        to_timedelta(value, what="Cancel.timeout")

    message = str(caught.value)
    assert message.startswith("Cancel.timeout: "), message
    for part in says:
        assert part in message, (part, message)


def test_every_float_hint_parses_back_to_the_same_duration() -> None:
    for seconds in (0.001, 0.1, 2.5, 90.0, 86400.5):
        with pytest.raises(ValueError) as caught:
            to_timedelta(seconds)  # type: ignore[arg-type]
        ms = round(seconds * 1000)
        assert f"'{ms}ms'" in str(caught.value)
        assert parse_duration(f"{ms}ms") == to_timedelta(ms) == dt.timedelta(seconds=seconds)


def test_the_wire_strings_do_not_change() -> None:
    assert [to_duration_str(to_timedelta(ms)) for ms in (1500, 1000, 90_000, 3_600_000, 604_800_000)] == [
        "1500ms",
        "1s",
        "90s",
        "1h",
        "1w",
    ]


# -- each place users give a duration -----------------------------------------------------------------


def test_cancel_and_timeouts_take_milliseconds_as_inngest_py() -> None:
    assert inngest.Cancel(event="a/b", timeout=3_600_000).to_dict() == {"event": "a/b", "timeout": "1h"}
    assert inngest.Timeouts(start=600_000, finish=2500).to_dict() == {"start": "10m", "finish": "2500ms"}
    assert inngest.Timeouts(start="10m", finish=dt.timedelta(hours=2)).to_dict() == {"start": "10m", "finish": "2h"}


def test_create_function_refuses_a_float_timeout_naming_it() -> None:
    with pytest.raises(ValueError, match=r"Timeouts\.finish: got the float 60\.0"):
        define("float-timeouts", timeouts=inngest.Timeouts(finish=60.0))(_noop)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Cancel\.timeout: got the float 0\.5"):
        define("float-cancel", cancel=[inngest.Cancel(event="a/b", timeout=0.5)])(_noop)  # type: ignore[arg-type]


def test_backoff_and_retry_after_take_milliseconds_like_every_other_duration() -> None:
    policy = Backoff.of(100, maximum=30_000)
    assert (policy.initial, policy.maximum) == (dt.timedelta(milliseconds=100), dt.timedelta(seconds=30))
    assert Backoff.of("100ms", maximum="30s") == policy
    assert inngest.RetryAfterError("later", 1500).retry_after == dt.timedelta(milliseconds=1500)
    with pytest.raises(ValueError, match=r"Backoff\.initial: got the float 0\.05"):
        Backoff.of(0.05)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"RetryAfterError retry_after: got the float 1\.5"):
        inngest.RetryAfterError("later", 1.5)  # type: ignore[arg-type]


def test_backoff_on_the_wire_stays_seconds() -> None:
    """Configs and opcodes carry a backoff as numbers of seconds (what ``to_dict`` writes)."""
    policy = Backoff.of(250, maximum="1m")
    assert policy.to_dict()["initial"] == 0.25
    assert Backoff.from_dict(policy.to_dict()) == policy
    assert Backoff.from_dict({"initial": 2, "maximum": "1m"}).initial == dt.timedelta(seconds=2)
    with pytest.raises(ValueError, match=r"Backoff\.maximum"):
        Backoff.from_dict({"maximum": float("inf")})


async def _noop(ctx: inngest.Context) -> None:
    return None


@define("int-durations")
async def int_durations(ctx: inngest.Context) -> None:
    step = ctx.event.data["step"]
    if step == "wait":
        await ctx.step.wait_for_event("w", event="a/b", timeout=2000)
    elif step == "invoke":
        await ctx.step.invoke_by_id("i", function_id="child", timeout=60_000)
    elif step == "sleep":
        await ctx.step.sleep("s", 1500)


@pytest.mark.parametrize(
    ("step", "op", "opts"),
    [
        ("wait", Op.WAIT_FOR_EVENT, {"event": "a/b", "timeout": "2s"}),
        ("invoke", Op.INVOKE_FUNCTION, {"timeout": "1m"}),
        ("sleep", Op.SLEEP, {"duration": "1500ms"}),
    ],
)
async def test_step_durations_given_as_ints_are_milliseconds_on_the_wire(
    step: str, op: Op, opts: dict[str, str]
) -> None:
    result = await execute(int_durations, request({"step": step}))

    assert isinstance(result, StepsReported)
    [opcode] = result.opcodes
    assert opcode.op is op
    assert opcode.opts is not None
    assert {k: opcode.opts[k] for k in opts} == opts


@define("float-sleep")
async def float_sleep(ctx: inngest.Context) -> None:
    await ctx.step.sleep("nap", 2.5)  # type: ignore[arg-type]


async def test_a_float_sleep_fails_naming_the_step_and_the_fix() -> None:
    result = await execute(float_sleep, request())

    assert isinstance(result, FunctionFailed)
    message = result.error["message"]
    assert result.error["name"] == "ValueError", result.error
    assert message.startswith("step 'nap' sleep duration: got the float 2.5"), message
    assert "2500" in message and "timedelta(seconds=2.5)" in message, message
