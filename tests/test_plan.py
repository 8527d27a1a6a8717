"""The executor's decision, without Redis: (job, loaded run, policy, checked answer, now) -> Plan.

Every branch of ``stepq.runtime.decide``: a step's result (ok, failed, error with retries left or
spent, no-retry, its own policy), a planned step's result, a sleep, fan-outs of planned steps,
sleeps, waits and invokes, the function's return and failure, and the plans the executor makes
outside an answer (an unknown function, giving up).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import msgpack
import pytest

from stepq.engine import FunctionFailed, FunctionReturned, StepsReported
from stepq.event import Event
from stepq.opcodes import Op, Opcode, hash_step_id, memo_data, memo_error
from stepq.replay import FailedStep
from stepq.retry import Backoff
from stepq.runtime import keys
from stepq.runtime.answers import check_answer
from stepq.runtime.decide import (
    DEFAULT_INVOKE_TIMEOUT,
    INVOKE_TIMEOUT_ERROR,
    decide,
    finish,
    give_up,
)
from stepq.runtime.jobs import JobKind, JobSpec
from stepq.runtime.limits import Limits
from stepq.runtime.plan import Commit, FanOut, Finish, JobLease, Now, Plan, Policy, RaisedBy, Resolve, Retry, Sleep
from stepq.runtime.plan_wire import encode, history_fields
from stepq.runtime.run_status import RunStatus
from stepq.runtime.store import LoadedRun
from stepq.runtime.wait_expressions import index_token

RUN = "01PLAN00000000000000000000"
# A moment far from today: a decision reads no clock but this one.
NOW = Now(ms=1_000_000_000_000, utc=dt.datetime.fromtimestamp(1_000_000_000, dt.UTC), draw=0.5)
POLICY = Policy(max_attempts=4, backoff=Backoff.of("1s", factor=2.0, maximum="1m", jitter=0.2))
TRIGGER = Event(name="shop/order", data={"order": "o-1"}, id="e1", ts=1)


def loaded(position: int = 3, *, fence_field: str = "fence", fence: str = "7") -> LoadedRun:
    memo = {f"k{i}": memo_data(i) for i in range(position)}
    return LoadedRun(
        run_id=RUN,
        fn_slug="app-fn",
        queue_id="app",
        fence=fence,
        position=position,
        events=[TRIGGER],
        memo=memo,
        stack=tuple(memo),
        fence_field=fence_field,
    )


def op(kind: Op, step_id: str = "charge", **fields: Any) -> Opcode:
    return Opcode(kind, hash_step_id(step_id), step_id, **fields)


def steps(*ops: Opcode, **fields: Any) -> StepsReported:
    return StepsReported(list(ops), **fields)


def discovery(position: int = 3, attempt: int = 0) -> JobSpec:
    return JobSpec(RUN, position, attempt)


def planned(step_id: str = "charge", attempt: int = 0) -> JobSpec:
    return JobSpec(RUN, 3, attempt, kind=JobKind.PLANNED, step_key=hash_step_id(step_id))


def backoff_ms(backoff: Backoff, failures: int) -> int:
    return int(backoff.delay_drawn(failures, NOW.draw).total_seconds() * 1000)


# -- a step's result -------------------------------------------------------------------------------


def test_a_step_that_ran_commits_its_value_and_queues_the_next_position() -> None:
    plan = decide(discovery(), loaded(), POLICY, steps(op(Op.STEP_RUN, data={"ok": 1})), NOW, elapsed_ms=12)

    assert plan == Plan(
        RUN,
        "app",
        "fence",
        "7",
        3,
        Commit(hash_step_id("charge"), "charge", memo_data({"ok": 1}), 1, 12, JobSpec(RUN, 4)),
        NOW.ms,
        nudge=discovery().job_id,
        label="step-ok",
        step="charge",
    )


def test_a_step_that_failed_for_good_commits_its_error() -> None:
    error = {"name": "Boom", "message": "no", "stack": ""}

    plan = decide(discovery(attempt=2), loaded(), POLICY, steps(op(Op.STEP_FAILED, error=error)), NOW)

    assert plan.write == Commit(hash_step_id("charge"), "charge", memo_error(error), 3, 0, JobSpec(RUN, 4))
    assert plan.label == "step-failed"


def test_a_step_error_with_attempts_left_retries_at_its_backoff_and_counts_the_execution() -> None:
    error = {"name": "Boom", "message": "try again", "stack": ""}

    plan = decide(discovery(attempt=1), loaded(), POLICY, steps(op(Op.STEP_ERROR, error=error)), NOW)

    assert plan.write == Retry(
        job=JobSpec(RUN, 3, 2),
        due_ms=NOW.ms + backoff_ms(POLICY.backoff, 2),
        key=hash_step_id("charge"),
        name="charge",
        attempts=2,
        error="Boom: try again",
        executed=True,
    )
    assert plan.label == "step-error-retry" and plan.nudge == discovery(attempt=1).job_id


def test_a_retry_after_from_the_answer_overrides_the_backoff() -> None:
    answer = steps(op(Op.STEP_ERROR, error={"name": "E", "message": ""}), retry_after=dt.timedelta(seconds=42))

    plan = decide(discovery(), loaded(), POLICY, answer, NOW)

    assert isinstance(plan.write, Retry) and plan.write.due_ms == NOW.ms + 42_000


def test_the_backoff_jitter_is_the_draw_that_came_in() -> None:
    error = {"name": "E", "message": ""}
    low, high = (dataclasses.replace(NOW, draw=d) for d in (0.0, 0.999))

    early = decide(discovery(), loaded(), POLICY, steps(op(Op.STEP_ERROR, error=error)), high).write
    late = decide(discovery(), loaded(), POLICY, steps(op(Op.STEP_ERROR, error=error)), low).write

    assert isinstance(early, Retry) and isinstance(late, Retry)
    assert late.due_ms == NOW.ms + 1000 and NOW.ms + 800 <= early.due_ms < late.due_ms


def test_a_step_error_on_its_last_attempt_is_memoized_as_failed() -> None:
    error = {"name": "Boom", "message": "last"}

    plan = decide(discovery(attempt=3), loaded(), POLICY, steps(op(Op.STEP_ERROR, error=error)), NOW)

    assert plan.write == Commit(hash_step_id("charge"), "charge", memo_error(error), 4, 0, JobSpec(RUN, 4))
    assert plan.label == "step-failed"


def test_a_step_error_the_sdk_said_not_to_retry_fails_the_step_at_once() -> None:
    error = {"name": "NonRetriable", "message": "stop"}

    plan = decide(discovery(), loaded(), POLICY, steps(op(Op.STEP_ERROR, error=error), no_retry=True), NOW)

    assert isinstance(plan.write, Commit) and plan.write.value == memo_error(error)


def test_a_step_with_its_own_retries_and_backoff_uses_them() -> None:
    own = {"initial": 10.0, "factor": 3.0, "maximum": 100.0, "jitter": 0.0}
    error = {"name": "E", "message": ""}
    generous = op(Op.STEP_ERROR, error=error, opts={"retries": 9, "backoff": own})
    none = op(Op.STEP_ERROR, error=error, opts={"retries": 0})

    retried = decide(discovery(attempt=5), loaded(), POLICY, steps(generous), NOW).write
    failed = decide(discovery(), loaded(), POLICY, steps(none), NOW).write

    assert isinstance(retried, Retry) and retried.due_ms == NOW.ms + 100_000  # 10 s * 3**5, capped at 100 s
    assert isinstance(failed, Commit) and failed.value == memo_error(error)


def test_a_retry_after_a_wake_up_re_enters_where_the_run_stands() -> None:
    # a wake-up job at position 2 memoized its sleep: the run it loaded stands at 3
    wake = JobSpec(RUN, 2, kind=JobKind.WAKE, step_key="nap")

    plan = decide(wake, loaded(3), POLICY, steps(op(Op.STEP_ERROR, error={"name": "E"})), NOW)

    assert isinstance(plan.write, Retry) and plan.write.job == JobSpec(RUN, 3, 1)


# -- a planned step's result -----------------------------------------------------------------------


def test_a_planned_steps_result_resolves_it() -> None:
    run = loaded(fence_field="fence:" + hash_step_id("charge"), fence="2")

    plan = decide(planned(), run, POLICY, steps(op(Op.STEP_RUN, data=5)), NOW, elapsed_ms=3)

    assert plan.write == Resolve(hash_step_id("charge"), "charge", memo_data(5), 1, 3)
    assert (plan.fence_field, plan.fence, plan.nudge) == (run.fence_field, "2", planned().job_id)


def test_a_planned_step_that_failed_for_good_resolves_with_its_error() -> None:
    error = {"name": "E", "message": "x"}

    plan = decide(planned(attempt=3), loaded(), POLICY, steps(op(Op.STEP_ERROR, error=error)), NOW)

    assert plan.write == Resolve(hash_step_id("charge"), "charge", memo_error(error), 4, 0)


def test_a_planned_steps_error_retries_that_step() -> None:
    plan = decide(planned(attempt=1), loaded(), POLICY, steps(op(Op.STEP_ERROR, error={"name": "E"})), NOW)

    assert isinstance(plan.write, Retry)
    assert plan.write.job == planned(attempt=2) and plan.write.key == hash_step_id("charge")


def test_a_planned_steps_invocation_failing_outside_the_step_retries_that_step() -> None:
    failed = FunctionFailed({"name": "Crash", "message": "x"}, retriable=True)

    plan = decide(planned(), loaded(), POLICY, failed, NOW)

    assert plan.write == Retry(
        planned(attempt=1), NOW.ms + backoff_ms(POLICY.backoff, 1), hash_step_id("charge"), "", 1, "Crash: x", False
    )
    assert plan.label == "function-error-retry"


# -- a sleep ---------------------------------------------------------------------------------------


def test_a_sleep_parks_the_run_until_its_wake_job() -> None:
    nap = op(Op.SLEEP, "nap", opts={"duration": "90s"})

    plan = decide(discovery(), loaded(), POLICY, steps(nap), NOW)

    wake = JobSpec(RUN, 3, kind=JobKind.WAKE, step_key=nap.id)
    assert plan.write == Sleep(nap.id, "nap", wake, NOW.ms + 90_000)
    assert plan.label == "sleep" and plan.step == "nap"


def test_a_sleep_until_a_date_wakes_at_that_date() -> None:
    until = NOW.utc + dt.timedelta(hours=2)
    nap = op(Op.SLEEP, "until", opts={"duration": until.isoformat()})

    plan = decide(discovery(), loaded(), POLICY, steps(nap), NOW)

    assert isinstance(plan.write, Sleep) and plan.write.due_ms == NOW.ms + 2 * 3600 * 1000


# -- fan-outs --------------------------------------------------------------------------------------


def test_parallel_steps_are_planned_with_a_job_each_and_a_join() -> None:
    a, b = op(Op.STEP_PLANNED, "a"), op(Op.STEP_PLANNED, "b")

    plan = decide(discovery(), loaded(), POLICY, steps(a, b), NOW)

    fan = plan.write
    assert isinstance(fan, FanOut)
    assert [(s.key, s.name, s.job, s.due_ms, s.wait, s.start) for s in fan.steps] == [
        (a.id, "a", JobSpec(RUN, 3, kind=JobKind.PLANNED, step_key=a.id), NOW.ms, None, None),
        (b.id, "b", JobSpec(RUN, 3, kind=JobKind.PLANNED, step_key=b.id), NOW.ms, None, None),
    ]
    assert fan.join == JobSpec(RUN, 5) and fan.status is RunStatus.RUNNING
    assert fan.force_plan and fan.starts_now and fan.waits == ()
    assert plan.label == "fan-out:2" and plan.step == "a,b" and plan.nudge == discovery().job_id


def test_one_planned_step_lifts_the_forced_planning() -> None:
    fan = decide(discovery(), loaded(), POLICY, steps(op(Op.STEP_PLANNED, "a")), NOW).write

    assert isinstance(fan, FanOut) and not fan.force_plan and fan.join == JobSpec(RUN, 4)


def test_sleeps_reported_together_each_get_a_timer_job() -> None:
    short, long = op(Op.SLEEP, "short", opts={"duration": "1s"}), op(Op.SLEEP, "long", opts={"duration": "1m"})

    fan = decide(discovery(), loaded(), POLICY, steps(short, long), NOW).write

    assert isinstance(fan, FanOut) and fan.status is RunStatus.SLEEPING and not fan.starts_now
    assert [(s.job, s.due_ms) for s in fan.steps] == [
        (JobSpec(RUN, 3, kind=JobKind.TIMER, step_key=short.id), NOW.ms + 1000),
        (JobSpec(RUN, 3, kind=JobKind.TIMER, step_key=long.id), NOW.ms + 60_000),
    ]


def test_a_wait_registers_with_the_runs_own_values_filled_in_and_times_out_by_its_timer() -> None:
    wait = op(
        Op.WAIT_FOR_EVENT,
        "paid",
        name="shop/paid",
        opts={"event": "shop/paid", "timeout": "1h", "if": "async.data.order == event.data.order"},
    )

    fan = decide(discovery(), loaded(), POLICY, steps(wait), NOW).write

    assert isinstance(fan, FanOut) and fan.status is RunStatus.WAITING
    [step] = fan.steps
    assert step.job == JobSpec(RUN, 3, kind=JobKind.TIMER, step_key=wait.id)
    assert step.due_ms == NOW.ms + 3600 * 1000
    [record] = fan.waits
    assert (record.run_id, record.key, record.event, record.expires_ms) == (RUN, wait.id, "shop/paid", step.due_ms)
    assert record.expression == 'async.data.order == "o-1"'
    assert step.wait is not None and step.wait.field == f"wait:{wait.id}"
    token = index_token("o-1")
    assert token is not None and step.wait.set_key == keys.wait_index(0, "shop/paid", "data.order", token)


def test_an_invoke_starts_its_child_now_and_times_out_with_inngests_error() -> None:
    call = op(Op.INVOKE_FUNCTION, "call", opts={"function_id": "app-child", "payload": {"data": {"x": 1}}})

    fan = decide(discovery(), loaded(), POLICY, steps(call), NOW).write

    assert isinstance(fan, FanOut) and fan.status is RunStatus.WAITING and fan.starts_now
    [step] = fan.steps
    assert step.job == JobSpec(RUN, 3, kind=JobKind.TIMER, step_key=call.id, value=memo_error(INVOKE_TIMEOUT_ERROR))
    assert step.due_ms == NOW.ms + int(DEFAULT_INVOKE_TIMEOUT.total_seconds() * 1000)
    child = {"function_id": "app-child", "payload": {"data": {"x": 1}}, "name": "call"}
    assert step.start == JobSpec(RUN, 3, kind=JobKind.INVOKE, step_key=call.id, value=child)


def test_an_invoke_with_a_timeout_times_out_then() -> None:
    call = op(Op.INVOKE_FUNCTION, "call", opts={"function_id": "app-child", "timeout": "5m"})

    fan = decide(discovery(), loaded(), POLICY, steps(call), NOW).write

    assert isinstance(fan, FanOut) and fan.steps[0].due_ms == NOW.ms + 300_000


def test_a_mixed_fan_out_waits_and_joins_after_all_its_steps() -> None:
    ops = [
        op(Op.STEP_PLANNED, "a"),
        op(Op.SLEEP, "nap", opts={"duration": "1s"}),
        op(Op.WAIT_FOR_EVENT, "w", opts={"event": "x/y", "timeout": "1m"}),
    ]

    fan = decide(discovery(), loaded(), POLICY, steps(*ops), NOW).write

    assert isinstance(fan, FanOut)
    assert fan.status is RunStatus.WAITING and fan.join == JobSpec(RUN, 6) and len(fan.waits) == 1
    assert [s.job.kind if s.job else None for s in fan.steps] == [JobKind.PLANNED, JobKind.TIMER, JobKind.TIMER]


# -- the function's end ----------------------------------------------------------------------------


def test_a_function_that_returned_completes_the_run_and_is_never_nudged() -> None:
    plan = decide(discovery(), loaded(), POLICY, FunctionReturned({"total": 3}, warnings=["diverged"]), NOW)

    assert plan.write == Finish(RunStatus.COMPLETED, output={"total": 3})
    assert plan.warnings == ("diverged",) and plan.nudge == "" and plan.label == RunStatus.COMPLETED
    assert (plan.fence_field, plan.fence) == ("fence", "7")


def test_a_retriable_function_failure_with_attempts_left_retries_the_run() -> None:
    failed = FunctionFailed({"name": "Crash", "message": "x"}, retriable=True)

    plan = decide(discovery(attempt=1), loaded(), POLICY, failed, NOW)

    assert plan.write == Retry(JobSpec(RUN, 3, 2), NOW.ms + backoff_ms(POLICY.backoff, 2), "", "", 2, "Crash: x", False)


@pytest.mark.parametrize(("attempt", "retriable"), [(3, True), (0, False)], ids=["attempts-spent", "not-retriable"])
def test_a_function_failure_that_is_not_retried_fails_the_run(attempt: int, retriable: bool) -> None:
    error = {"name": "Crash", "message": "x"}

    plan = decide(discovery(attempt=attempt), loaded(), POLICY, FunctionFailed(error, retriable=retriable), NOW)

    assert plan.write == Finish(RunStatus.FAILED, error=error) and plan.nudge == ""


def test_a_non_retriable_error_a_step_raised_fails_the_run_recording_that_step() -> None:
    error = {"name": "NonRetriableError", "message": "card declined"}
    failed = FunctionFailed(error, retriable=False, step=FailedStep(hash_step_id("charge"), "charge"))

    plan = decide(discovery(attempt=1), loaded(), POLICY, failed, NOW, elapsed_ms=12)

    raised = RaisedBy(hash_step_id("charge"), "charge", 2, 12, "NonRetriableError: card declined")
    assert plan.write == Finish(RunStatus.FAILED, error=error, raised_by=raised)
    assert (plan.nudge, plan.step, plan.attempt) == ("", "charge", 2)
    _, blob, _ = encode(plan, defaults=Limits(), grace_ms=60_000)
    _, kind, body = msgpack.unpackb(blob, raw=True)
    key = hash_step_id("charge").encode()
    assert (kind, body[3:]) == (b"finish", [key, b"charge", 2, 12, b"NonRetriableError: card declined"])
    fields = msgpack.unpackb(history_fields(plan), raw=False)
    assert (fields["k"], fields["key"], fields["name"], fields["attempt"]) == ("finish", key.decode(), "charge", 2)
    # a plain failure carries no step on the wire
    plain = dataclasses.replace(plan, write=Finish(RunStatus.FAILED, error=error))
    assert msgpack.unpackb(encode(plain, defaults=Limits(), grace_ms=1)[1], raw=True)[2][3:] == [b""]


def test_a_failure_naming_a_step_the_job_could_not_have_run_stands_as_the_functions() -> None:
    failed = FunctionFailed({"name": "NonRetriableError"}, retriable=False, step=FailedStep(hash_step_id("b"), "b"))

    def checked(job: JobSpec, memoized: set[str]) -> object:
        result = check_answer(failed, job=job, memoized=memoized, position=3, limits=Limits())
        assert isinstance(result, FunctionFailed)
        return result.step

    assert checked(discovery(), set()) == failed.step
    assert checked(planned("b"), set()) == failed.step
    assert checked(discovery(), {hash_step_id("b")}) is None  # memoized: its code did not run
    assert checked(planned("a"), set()) is None  # the job ran planned step a only


def test_a_divergence_fails_the_run_with_its_error() -> None:
    error = {"name": "NonDeterminismError", "message": "step 'b' ran where 'a' was expected"}

    plan = decide(discovery(), loaded(), POLICY, FunctionFailed(error, retriable=False), NOW)

    assert plan.write == Finish(RunStatus.FAILED, error=error)


def test_an_unknown_function_fails_the_run_under_its_claim() -> None:
    error = {"name": "FunctionNotFound", "message": "x"}

    plan = finish(loaded(), Finish(RunStatus.FAILED, error=error), NOW.ms)

    assert plan == Plan(RUN, "app", "fence", "7", 3, Finish(RunStatus.FAILED, error=error), NOW.ms, label="failed")


def test_giving_up_fails_the_run_whoever_holds_it() -> None:
    plan = give_up(RUN, {"name": "InternalError"}, NOW.ms)

    assert (plan.fence_field, plan.fence, plan.nudge) == ("", "", "")
    assert plan.write == Finish(RunStatus.FAILED, error={"name": "InternalError"})


def test_the_same_inputs_decide_the_same_plan() -> None:
    answer = steps(op(Op.STEP_PLANNED, "a"), op(Op.WAIT_FOR_EVENT, "w", opts={"event": "x/y", "timeout": "1m"}))

    assert decide(discovery(), loaded(), POLICY, answer, NOW) == decide(discovery(), loaded(), POLICY, answer, NOW)


# -- the plan on the wire (runtime/plan_wire.py) ---------------------------------------------------


@pytest.mark.parametrize("position", [0, 3, 127, 128, 70_000])
def test_a_commits_next_job_goes_on_the_wire_as_the_job_encodes_itself(position: int) -> None:
    plan = decide(
        discovery(position), loaded(position), POLICY, steps(op(Op.STEP_RUN, data=[1, "a"])), NOW, elapsed_ms=3
    )
    assert isinstance(plan.write, Commit)
    lease = JobLease(discovery(position).job_id, "token", 10_000, True)

    _, blob, next_payload = encode(plan, defaults=Limits(), grace_ms=60_000, lease=lease)

    head, kind, body = msgpack.unpackb(blob, raw=True)
    assert kind == b"commit"
    assert next_payload == JobSpec(RUN, position + 1).encode(NOW.ms) == body[5]
    assert head[9] + msgpack.packb(position + 7) + head[10] == JobSpec(RUN, position + 7).encode(NOW.ms)


def test_a_commit_whose_next_job_is_not_the_plain_next_step_is_encoded_as_it_is() -> None:
    plan = decide(discovery(), loaded(), POLICY, steps(op(Op.STEP_RUN, data=1)), NOW)
    assert isinstance(plan.write, Commit)
    nxt = JobSpec(RUN, 4, attempt=2)
    plan = dataclasses.replace(plan, write=dataclasses.replace(plan.write, next_job=nxt), nudge="")

    _, blob, next_payload = encode(plan, defaults=Limits(), grace_ms=60_000)

    head, _, body = msgpack.unpackb(blob, raw=True)
    assert next_payload == nxt.encode(NOW.ms) == body[5]
    assert (head[9], head[10]) == (b"", b"")  # no nudge: no halves
