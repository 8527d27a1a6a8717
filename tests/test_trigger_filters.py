"""Trigger expressions: an event starts a function only when its trigger's CEL expression holds.

Real Redis (the test database, flushed first) and real worker processes serving
``tests.apps.filters:client``.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

import stepq
from stepq.expressions import ExpressionError
from stepq.runtime.registry import Registry
from tests.apps.filters import SIGNUP
from tests.helpers import StartWorkers, run_ids_for_event, runs_of, wait_for_run

APP = "t-filters"


async def send(sender: stepq.Client, data: dict[str, Any], name: str = SIGNUP) -> str:
    [event_id] = await sender.send(stepq.Event(name=name, data=data))
    return event_id


async def started(redis: Redis, function: str, event_id: str) -> list[str]:
    return await run_ids_for_event(redis, function, event_id)


async def test_only_the_pro_event_starts_the_filtered_function_and_it_completes(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("filters")
    pro_id, free_id = await sender.send(
        [stepq.Event(name=SIGNUP, data={"plan": "pro"}), stepq.Event(name=SIGNUP, data={"plan": "free"})]
    )

    # Runs are created while the event is ingested: what send returns with is final.
    [pro_run] = await started(redis, "pro-only", pro_id)
    assert await started(redis, "pro-only", free_id) == []
    done = await wait_for_run(redis, pro_run, timeout=20)
    assert done.status == "completed", done.error
    assert done.output == {"plan": "pro", "event_name": SIGNUP}
    assert [s.name for s in done.steps] == ["read-plan"]

    # The unfiltered function on the same event starts for both.
    every = {view.output["plan"] for view in [await wait_for_run(redis, r) for r in await _runs(redis, "every-plan")]}
    assert every == {"pro", "free"}
    assert len(await runs_of(redis, "pro-only")) == 1


async def test_events_sent_one_by_one_are_filtered_the_same_way(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("filters")
    free_id = await send(sender, {"plan": "free"})
    pro_id = await send(sender, {"plan": "pro"})
    assert await started(redis, "pro-only", free_id) == []
    [pro_run] = await started(redis, "pro-only", pro_id)
    assert (await wait_for_run(redis, pro_run, timeout=20)).status == "completed"


async def test_missing_fields_and_odd_values_start_nothing_and_break_nothing(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("filters")
    odd: list[dict[str, Any]] = [
        {},
        {"plan": None},
        {"plan": 1},
        {"plan": ["pro"]},
        {"plan": {"name": "pro"}},
        {"plan": "PRO"},
        {"seats": "many"},  # pro-or-big: 'many' >= 10 is an error, so no match
        {"tags": "beta"},  # tagged: 'beta' in 'beta' is an error on a string
    ]
    ids = await sender.send([stepq.Event(name=SIGNUP, data=data) for data in odd])
    for event_id in ids:
        for function in ("pro-only", "pro-or-big", "tagged"):
            assert await started(redis, function, event_id) == [], (function, event_id)
        assert len(await started(redis, "every-plan", event_id)) == 1
    for run_id in await _runs(redis, "every-plan"):
        assert (await wait_for_run(redis, run_id)).status == "completed"


async def test_a_function_with_several_triggers_for_one_event_starts_once_if_any_matches(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("filters")
    both = await send(sender, {"plan": "pro", "seats": 50})
    pro = await send(sender, {"plan": "pro", "seats": 1})
    big = await send(sender, {"plan": "free", "seats": 10.0})
    neither = await send(sender, {"plan": "free", "seats": 9})

    assert await started(redis, "pro-or-big", neither) == []
    for event_id, seen in ((both, {"plan": "pro", "seats": 50}), (pro, {"plan": "pro", "seats": 1})):
        [run_id] = await started(redis, "pro-or-big", event_id)
        done = await wait_for_run(redis, run_id, timeout=20)
        assert done.status == "completed" and done.output == seen
    [run_id] = await started(redis, "pro-or-big", big)
    assert (await wait_for_run(redis, run_id, timeout=20)).output == {"plan": "free", "seats": 10.0}


async def test_expressions_see_the_event_as_functions_do(
    redis: Redis, sender: stepq.Client, start_workers: StartWorkers
) -> None:
    start_workers("filters")
    beta = await send(sender, {"tags": ["alpha", "beta"]})
    alpha = await send(sender, {"tags": ["alpha"]})
    assert await started(redis, "tagged", alpha) == []
    [run_id] = await started(redis, "tagged", beta)
    assert (await wait_for_run(redis, run_id, timeout=20)).status == "completed"


def test_an_invalid_expression_fails_at_definition_with_a_clear_error() -> None:
    client = stepq.Client("t-filters-invalid")
    with pytest.raises(stepq.FunctionConfigError) as info:

        @client.create_function(
            id="broken", trigger=stepq.TriggerEvent(event=SIGNUP, expression="event.data.plan = 'pro'")
        )
        async def broken(ctx: stepq.Context) -> None:  # pragma: no cover - never defined
            pass

    assert isinstance(info.value, ExpressionError)
    message = str(info.value)
    assert message.startswith(
        f"TriggerEvent(event={SIGNUP!r}).expression: expression \"event.data.plan = 'pro'\": syntax error at line 1"
    )
    with pytest.raises(stepq.FunctionConfigError, match=r"unknown variable 'async' \(available here: 'event'\)"):
        stepq.TriggerEvent(event=SIGNUP, expression="async.data.plan == 'pro'")


async def test_an_invalid_expression_registered_without_the_sdk_starts_nothing(
    redis: Redis, sender: stepq.Client
) -> None:
    """An app that registers its config some other way is not trusted: its bad filter matches nothing."""

    def config(fn_id: str, expression: str) -> dict[str, Any]:
        return {
            "id": f"t-raw-{fn_id}",
            "fn_id": fn_id,
            "app_id": "t-raw",
            "name": fn_id,
            "triggers": [{"event": "test/raw", "expression": expression}],
            "retries": 0,
        }

    await Registry(redis).register_app(
        "t-raw", [config("bad", "event.data.plan = 'pro'"), config("good", "event.data.plan == 'pro'")]
    )
    event_id = await send(sender, {"plan": "pro"}, name="test/raw")
    assert await started(redis, "bad", event_id) == []
    assert len(await started(redis, "good", event_id)) == 1


async def _runs(redis: Redis, function: str) -> list[str]:
    return [view.run_id for view in await runs_of(redis, function)]
