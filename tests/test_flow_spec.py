"""Flow control's validated spec (``stepq.flow_spec``): SDK options to Inngest's JSON config (as
inngest-py writes it) to frozen dataclasses, and every rule refusing bad input with an error that
names the field. Pure: no Redis, no processes.

``create_function`` and app registration both validate the options with this module; the last
tests here check that both paths give the precise error and keep valid options as given.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any

import inngest
import pytest

import stepq
from stepq.errors import FunctionConfigError
from stepq.flow_spec import (
    BatchSpec,
    ConcurrencyLimit,
    DebounceSpec,
    FlowControl,
    PrioritySpec,
    RateLimitSpec,
    SingletonSpec,
    ThrottleSpec,
    options_to_config,
    parse_flow_control,
)
from stepq.runtime.inngest_config import parse_register

APP_URL = "http://127.0.0.1:9/api/inngest"
SDK = "create_function('f'): "
REG = "functions[0]."


def _register(**fields: Any) -> dict[str, Any]:
    function = {
        "id": "app-f",
        "name": "f",
        "triggers": [{"event": "e"}],
        "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "http", "url": APP_URL}}},
        **fields,
    }
    return {"url": APP_URL, "appName": "app", "sdk": "py:v0.5.0", "framework": "fastapi", "functions": [function]}


def _parse(**fields: Any) -> FlowControl:
    return parse_flow_control(fields, prefix=REG)


def _refused(message: str, **fields: Any) -> None:
    """``fields`` as a registered config are refused with an error starting with ``message``."""
    with pytest.raises(FunctionConfigError) as caught:
        _parse(**fields)
    assert str(caught.value).startswith(message), str(caught.value)


# -- SDK types -> JSON (as inngest-py serializes) -> spec ------------------------------------------

OPTIONS: dict[str, Any] = {
    "concurrency": [
        stepq.Concurrency(limit=2, key="event.data.user_id"),
        stepq.Concurrency(limit=10, key="event.data.account", scope="account"),
    ],
    "throttle": stepq.Throttle(limit=5, period=dt.timedelta(seconds=90), key="event.data.user_id", burst=2),
    "debounce": stepq.Debounce(period=5000, key="event.data.doc", timeout=dt.timedelta(minutes=1)),
    "idempotency": "event.data.order_id",
    "singleton": stepq.Singleton(mode="cancel", key="event.data.user_id"),
}


def _official_config(**options: Any) -> dict[str, Any]:
    """The function config inngest-py itself sends for these options (its own types)."""
    client = inngest.Inngest(app_id="app", is_production=False)
    theirs: dict[str, Any] = {}
    for name, value in options.items():
        if isinstance(value, list):
            theirs[name] = [getattr(inngest, type(v).__name__)(**_fields(v)) for v in value]
        elif isinstance(value, str):
            theirs[name] = value
        else:
            theirs[name] = getattr(inngest, type(value).__name__)(**_fields(value))

    @client.create_function(fn_id="f", trigger=inngest.TriggerEvent(event="e"), **theirs)
    def handler(ctx: inngest.ContextSync) -> None:
        del ctx

    config = handler.get_config(APP_URL).main.to_dict()
    assert isinstance(config, dict)
    return config


def _fields(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__dataclass_fields__}


@pytest.mark.parametrize(
    "options",
    [
        OPTIONS,
        {
            "batch_events": stepq.Batch(max_size=100, timeout=5000, key="event.data.user", if_exp="event.data.n > 1"),
            "rate_limit": stepq.RateLimit(limit=10, period=dt.timedelta(hours=2), key="event.data.ip"),
            "throttle": stepq.Throttle(limit=1, period=7 * 86_400_000, burst=None),
        },
        {
            "priority": stepq.Priority(run="event.data.vip ? 120 : 0"),
            "rate_limit": stepq.RateLimit(limit=1, period=1000),
        },
    ],
    ids=["most", "batch", "priority"],
)
def test_options_serialize_as_inngest_py_does(options: dict[str, Any]) -> None:
    ours = options_to_config(label=SDK, **options)
    official = _official_config(**options)
    assert ours == {name: official[name] for name in ours}
    json_names = {"batch_events": "batchEvents", "rate_limit": "rateLimit"}
    assert set(ours) == {json_names.get(name, name) for name in options}


def test_round_trip_sdk_types_to_spec() -> None:
    spec = parse_flow_control(options_to_config(label=SDK, **OPTIONS), prefix=SDK, python_names=True)
    assert spec == FlowControl(
        concurrency=(
            ConcurrencyLimit(limit=2, key="event.data.user_id", scope="fn"),
            ConcurrencyLimit(limit=10, key="event.data.account", scope="account"),
        ),
        throttle=ThrottleSpec(limit=5, period_ms=90_000, key="event.data.user_id", burst=2),
        debounce=DebounceSpec(period_ms=5000, key="event.data.doc", timeout_ms=60_000),
        idempotency="event.data.order_id",
        singleton=SingletonSpec(mode="cancel", key="event.data.user_id"),
    )
    assert spec.given() == ["concurrency", "throttle", "debounce", "idempotency", "singleton"]
    batch = parse_flow_control(
        options_to_config(label=SDK, batch_events=stepq.Batch(max_size=2, timeout=dt.timedelta(minutes=5))),
        prefix=SDK,
    )
    assert batch.batch == BatchSpec(max_size=2, timeout_ms=300_000)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.throttle.limit = 9  # type: ignore[misc,union-attr]


def test_the_official_sdks_registered_config_parses_to_the_same_spec() -> None:
    official = _official_config(**{**OPTIONS, "priority": stepq.Priority(run="event.data.p")})
    spec = parse_flow_control(official, prefix=REG)
    assert spec.priority == PrioritySpec(run="event.data.p")
    assert spec.throttle == ThrottleSpec(limit=5, period_ms=90_000, key="event.data.user_id", burst=2)
    # inngest-py writes nulls for what is not set, and ``concurrency: []`` for failure handlers.
    assert official["batchEvents"] is None and official["rateLimit"] is None
    assert not parse_flow_control({"concurrency": [], "batchEvents": None, "cancel": []}, prefix=REG)


def test_durations_must_be_whole_seconds_in_the_sdk() -> None:
    for value, shown in ((1500, "1500 ms"), (dt.timedelta(milliseconds=2500), "2500 ms")):
        with pytest.raises(
            FunctionConfigError,
            match=re.escape(f"{SDK}throttle.period: must be a whole number of seconds, got {shown}"),
        ):
            options_to_config(label=SDK, throttle=stepq.Throttle(limit=1, period=value))
    with pytest.raises(FunctionConfigError, match=re.escape(f"{SDK}batch_events.timeout: ")):
        options_to_config(label=SDK, batch_events=stepq.Batch(max_size=2, timeout=2.5))  # type: ignore[arg-type]
    with pytest.raises(FunctionConfigError, match=re.escape(f"{SDK}debounce.timeout: must not be negative")):
        options_to_config(label=SDK, debounce=stepq.Debounce(period=1000, timeout=-1))


def test_sdk_options_of_the_wrong_type_are_refused_by_name() -> None:
    with pytest.raises(FunctionConfigError, match=re.escape(f"{SDK}concurrency: expected a list of Concurrency")):
        options_to_config(label=SDK, concurrency=stepq.Concurrency(limit=1))  # type: ignore[arg-type]
    with pytest.raises(FunctionConfigError, match=re.escape(f"{SDK}concurrency[1]: expected a stepq.Concurrency")):
        options_to_config(label=SDK, concurrency=[stepq.Concurrency(limit=1), {"limit": 2}])  # type: ignore[list-item]
    with pytest.raises(FunctionConfigError, match=re.escape(f"{SDK}throttle: expected a stepq.Throttle")):
        options_to_config(label=SDK, throttle={"limit": 1, "period": "1s"})  # type: ignore[arg-type]


# -- every rule, with the field it names -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # concurrency
        (
            {"concurrency": [{"limit": 1}, {"limit": 2}, {"limit": 3}]},
            f"{REG}concurrency: at most 2 concurrency limits, got 3",
        ),
        ({"concurrency": [{"limit": -1}]}, f"{REG}concurrency[0].limit: an integer from 0 to"),
        ({"concurrency": [{"limit": "3"}]}, f"{REG}concurrency[0].limit: expected an integer, got a string"),
        ({"concurrency": [{"limit": 2.5}]}, f"{REG}concurrency[0].limit: expected an integer, got a number"),
        ({"concurrency": [{"limit": True}]}, f"{REG}concurrency[0].limit: expected an integer, got a boolean"),
        (
            {"concurrency": [{"limit": 1}, {"limit": 1, "scope": "env"}]},
            f"{REG}concurrency[1].key: required for scope 'env'",
        ),
        ({"concurrency": [{"limit": 1, "scope": "account"}]}, f"{REG}concurrency[0].key: required for scope 'account'"),
        (
            {"concurrency": [{"limit": 1, "scope": "run"}]},
            f"{REG}concurrency[0].scope: one of fn, env, account, got 'run'",
        ),
        ({"concurrency": [{"limit": 1, "key": "event.data."}]}, f"{REG}concurrency[0].key: expression 'event.data.'"),
        (
            {"concurrency": [{"limit": 1, "key": "user.id"}]},
            f"{REG}concurrency[0].key: expression 'user.id': unknown variable 'user'",
        ),
        ({"concurrency": [{"limit": 1, "hash": "x"}]}, f"{REG}concurrency[0]: unknown field 'hash'"),
        ({"concurrency": ["x"]}, f"{REG}concurrency[0]: expected an object, got a string"),
        ({"concurrency": -2}, f"{REG}concurrency: an integer from 0 (no limit) to"),
        ({"concurrency": {"fn": [{"limit": 1}] * 3}}, f"{REG}concurrency.fn: at most 2 concurrency limits"),
        ({"concurrency": {"step": {"limit": 1}}}, f"{REG}concurrency.step: expected a list of limits, got an object"),
        ({"concurrency": {"limit": 1, "scope": "env"}}, f"{REG}concurrency.key: required for scope 'env'"),
        # throttle
        ({"throttle": {"period": "5s"}}, f"{REG}throttle.limit: required"),
        ({"throttle": {"limit": 0, "period": "5s"}}, f"{REG}throttle.limit: an integer from 1 to"),
        ({"throttle": {"limit": 1, "period": "5s", "burst": 0}}, f"{REG}throttle.burst: an integer from 1 to"),
        ({"throttle": {"limit": 1}}, f"{REG}throttle.period: required"),
        ({"throttle": {"limit": 1, "period": 5}}, f'{REG}throttle.period: expected a duration string such as "30s"'),
        ({"throttle": {"limit": 1, "period": "soon"}}, f"{REG}throttle.period: cannot parse 'soon'"),
        ({"throttle": {"limit": 1, "period": "1500ms"}}, f"{REG}throttle.period: must be a whole number of seconds"),
        ({"throttle": {"limit": 1, "period": "0s"}}, f"{REG}throttle.period: must be from 1s to 1w, got '0s'"),
        ({"throttle": {"limit": 1, "period": "8d"}}, f"{REG}throttle.period: must be from 1s to 1w, got '8d'"),
        ({"throttle": {"limit": 1, "period": "5s", "key": 3}}, f"{REG}throttle.key: expected a CEL expression string"),
        ({"throttle": 3}, f"{REG}throttle: expected an object, got a number"),
        # rate limit
        ({"rateLimit": {"limit": 0, "period": "1m"}}, f"{REG}rateLimit.limit: an integer from 1 to"),
        ({"rateLimit": {"limit": 1, "period": "25h"}}, f"{REG}rateLimit.period: must be from 1s to 1d, got '25h'"),
        ({"rateLimit": {"limit": 1, "period": "1m", "key": "event.data.x ==="}}, f"{REG}rateLimit.key: expression"),
        # debounce
        ({"debounce": {"period": "500ms"}}, f"{REG}debounce.period: must be a whole number of seconds"),
        ({"debounce": {"period": "0s"}}, f"{REG}debounce.period: must be from 1s to 1w"),
        ({"debounce": {"period": "8d"}}, f"{REG}debounce.period: must be from 1s to 1w"),
        (
            {"debounce": {"period": "1m", "timeout": "30s"}},
            f"{REG}debounce.timeout: must be at least the period (1m), got '30s'",
        ),
        ({"debounce": {"period": "1m", "timeout": "8d"}}, f"{REG}debounce.timeout: must be from 1s to 1w"),
        ({"debounce": {"key": "event.data.id"}}, f"{REG}debounce.period: required"),
        # batching
        (
            {"batchEvents": {"maxSize": 1, "timeout": "5s"}},
            f"{REG}batchEvents.maxSize: an integer from 2 to 500, got 1",
        ),
        ({"batchEvents": {"maxSize": 501, "timeout": "5s"}}, f"{REG}batchEvents.maxSize: an integer from 2 to 500"),
        ({"batchEvents": {"maxSize": 10}}, f"{REG}batchEvents.timeout: required"),
        ({"batchEvents": {"maxSize": 10, "timeout": "0s"}}, f"{REG}batchEvents.timeout: must be from 1s to 5m"),
        (
            {"batchEvents": {"maxSize": 10, "timeout": "6m"}},
            f"{REG}batchEvents.timeout: must be from 1s to 5m, got '6m'",
        ),
        ({"batchEvents": {"maxSize": 10, "timeout": "5s", "if": "event.data.n >"}}, f"{REG}batchEvents.if: expression"),
        ({"batchEvents": {"maxSize": 10, "timeout": "5s", "key": "async.id"}}, f"{REG}batchEvents.key: expression"),
        # priority, idempotency, singleton
        ({"priority": {"run": 5}}, f"{REG}priority.run: expected a CEL expression string, got a number"),
        ({"priority": {}}, ""),  # empty: none, accepted (checked below)
        ({"priority": {"run": None, "x": 1}}, f"{REG}priority: unknown field 'x'"),
        ({"priority": {"key": "event.data.p"}}, f"{REG}priority: unknown field 'key' (known here: run)"),
        ({"priority": {"run": "event.data.p +"}}, f"{REG}priority.run: expression"),
        ({"idempotency": ""}, f"{REG}idempotency: expression '': is empty"),
        ({"idempotency": "event.data.id )"}, f"{REG}idempotency: expression"),
        ({"singleton": {"key": "event.data.id"}}, f"{REG}singleton.mode: required"),
        ({"singleton": {"mode": "queue"}}, f"{REG}singleton.mode: one of skip, cancel, got 'queue'"),
        ({"singleton": {"mode": "skip", "key": "event.data.id +"}}, f"{REG}singleton.key: expression"),
    ],
)
def test_each_rule_refuses_naming_the_field(fields: dict[str, Any], message: str) -> None:
    if not message:
        assert not _parse(**fields)
        return
    _refused(message, **fields)


@pytest.mark.parametrize("other", ["debounce", "singleton", "priority", "cancel"])
def test_batching_cannot_be_combined_and_the_error_names_both(other: str) -> None:
    values = {
        "debounce": {"period": "5s"},
        "singleton": {"mode": "skip"},
        "priority": {"run": "event.data.p"},
        "cancel": [{"event": "stop"}],
    }
    fields = {"batchEvents": {"maxSize": 10, "timeout": "5s"}, other: values[other]}
    _refused(f"{REG}batchEvents: batching cannot be combined with {other} (Inngest refuses the pair)", **fields)
    # Each alone is valid (a cancel rule is not flow control).
    parse_flow_control({other: values[other]}, prefix=REG)
    with pytest.raises(FunctionConfigError, match=f"{re.escape(SDK)}batch_events: batching cannot be combined"):
        parse_flow_control(fields, prefix=SDK, python_names=True, has_cancel=other == "cancel")


def test_idempotency_with_a_rate_limit_is_refused_naming_both() -> None:
    _refused(
        f"{REG}idempotency: cannot be combined with rateLimit",
        idempotency="event.data.id",
        rateLimit={"limit": 1, "period": "1m"},
    )


def test_valid_limits_parse_with_their_defaults() -> None:
    spec = _parse(
        throttle={"limit": 2, "period": "2s", "key": None, "burst": None},
        rateLimit={"limit": 100, "period": "24h"},
        debounce={"period": "7d", "timeout": "7d", "key": ""},
        singleton={"mode": "skip", "key": None},
    )
    assert spec.throttle == ThrottleSpec(limit=2, period_ms=2000, key=None, burst=1)
    assert spec.rate_limit == RateLimitSpec(limit=100, period_ms=86_400_000)
    assert spec.debounce == DebounceSpec(period_ms=604_800_000, key=None, timeout_ms=604_800_000)
    assert spec.singleton == SingletonSpec(mode="skip")
    # "1h30m" is whole seconds; units combine as in Inngest's duration strings.
    assert _parse(throttle={"limit": 1, "period": "1h30m"}).throttle == ThrottleSpec(limit=1, period_ms=5_400_000)


def test_concurrency_forms() -> None:
    # A bare number (Inngest's schema allows one) is one fn-scoped limit; 0 means no limit.
    assert _parse(concurrency=5).concurrency == (ConcurrencyLimit(limit=5),)
    assert not _parse(concurrency=0)
    # One limit object, as the Go server also reads it.
    assert _parse(concurrency={"limit": 3, "key": "event.data.u"}).concurrency == (
        ConcurrencyLimit(limit=3, key="event.data.u"),
    )
    # Inngest's newer form: fn = run-level limits, step = step-level limits.
    spec = _parse(
        concurrency={
            "fn": [{"limit": 1, "key": "event.data.account", "scope": "env"}],
            "step": [{"limit": 10}, {"limit": 2, "key": "event.data.u"}],
        }
    )
    assert spec.run_concurrency == (ConcurrencyLimit(limit=1, key="event.data.account", scope="env"),)
    assert spec.concurrency == (ConcurrencyLimit(limit=10), ConcurrencyLimit(limit=2, key="event.data.u"))
    # A limit of 0 or none is no limit (Inngest's SDK docs), after the rest of it is checked.
    assert not _parse(concurrency=[{"limit": 0, "key": "event.data.u"}, {"key": "event.data.v", "scope": None}])
    _refused(f"{REG}concurrency[0].key: expression", concurrency=[{"limit": 0, "key": "event.data.u +"}])


# -- wired into create_function and app registration -------------------------------------------------


def _create(**options: Any) -> None:
    client = stepq.Inngest(app_id="t-flow")
    client.create_function(fn_id="f", trigger=stepq.TriggerEvent(event="e"), **options)


def test_create_function_gives_the_precise_error_for_a_bad_option() -> None:
    with pytest.raises(FunctionConfigError, match=re.escape(f"{SDK}concurrency: at most 2 concurrency limits, got 3")):
        _create(concurrency=[stepq.Concurrency(limit=n) for n in (1, 2, 3)])
    with pytest.raises(FunctionConfigError, match=re.escape(f"{SDK}concurrency[0].key: required for scope 'env'")):
        _create(concurrency=[stepq.Concurrency(limit=1, scope="env")])
    with pytest.raises(FunctionConfigError, match=re.escape(f"{SDK}rate_limit.period: must be from 1s to 1d")):
        _create(rate_limit=stepq.RateLimit(limit=1, period=dt.timedelta(days=2)))
    with pytest.raises(FunctionConfigError, match=re.escape(f"{SDK}batch_events.max_size: an integer from 2")):
        _create(batch_events=stepq.Batch(max_size=1, timeout=1000))
    with pytest.raises(
        FunctionConfigError, match=re.escape(f"{SDK}batch_events: batching cannot be combined with cancel")
    ):
        _create(batch_events=stepq.Batch(max_size=5, timeout=1000), cancel=[stepq.Cancel(event="stop")])
    # Valid: accepted.
    _create(debounce=stepq.Debounce(period=1000))
    _create(throttle=stepq.Throttle(limit=1, period=1000))
    _create(rate_limit=stepq.RateLimit(limit=1, period=1000), singleton=stepq.Singleton(mode="skip"))
    _create(idempotency="event.data.id")
    # Empty or zero: no limit, accepted.
    _create(concurrency=[])
    stepq.Inngest(app_id="t").create_function(fn_id="g", concurrency=[stepq.Concurrency(limit=0)])


def test_registration_gives_the_precise_error_for_a_bad_option() -> None:
    with pytest.raises(FunctionConfigError, match=re.escape("functions[0].throttle.period: must be from 1s to 1w")):
        parse_register(_register(throttle={"limit": 1, "period": "30d"}))
    with pytest.raises(
        FunctionConfigError, match=re.escape("functions[0].batchEvents: batching cannot be combined with cancel")
    ):
        parse_register(_register(batchEvents={"maxSize": 5, "timeout": "5s"}, cancel=[{"event": "stop"}]))
    both = _register(concurrency=[{"limit": 2}], debounce={"period": "5s"})
    assert parse_register(both)[1][0]["flow"] == {"concurrency": [{"limit": 2}], "debounce": {"period": "5s"}}
    _, configs = parse_register(_register(concurrency=[], throttle=None, singleton={}))
    assert configs[0]["flow"] == {"concurrency": [], "singleton": {}}  # stored as sent: no limit


def test_an_official_sdk_app_with_flow_control_is_validated_then_kept() -> None:
    official = _official_config(**OPTIONS)
    payload = {"url": APP_URL, "appName": "app", "sdk": "py:v0.5.0", "framework": "fastapi", "functions": [official]}
    flow = parse_register(payload)[1][0]["flow"]
    assert sorted(flow) == sorted(["concurrency", "throttle", "debounce", "idempotency", "singleton"])
    official["throttle"]["period"] = "10d"
    with pytest.raises(
        FunctionConfigError, match=re.escape("functions[0].throttle.period: must be from 1s to 1w, got '10d'")
    ):
        parse_register(
            {"url": APP_URL, "appName": "app", "sdk": "py:v0.5.0", "framework": "fastapi", "functions": [official]}
        )
