"""Apps that serve their functions over HTTP register them with Inngest's sync payload.

``POST /fn/register`` carries ``{url, appName, sdk, framework, functions: [...]}`` (protocol §4.2).
Each function becomes a stepq function record whose runs go to the shared ``@http`` queue, where
``stepq worker --http`` invokes them at the URL they registered. Flow-control fields (concurrency,
throttle, debounce, batching, priority...) are refused by name, as ``create_function`` refuses its
keywords: stepq does not apply them yet, and a limit accepted but not kept would be worse. They are
validated first (``stepq.flow_spec``), so a bad one gets an error naming its field.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urlparse

from stepq.durations import to_timedelta
from stepq.errors import FunctionConfigError
from stepq.expressions import ExpressionError, compile_expression
from stepq.flow_spec import parse_flow_control
from stepq.jsonvalue import NotJSONError, check_json, json_type, shown
from stepq.retry import Backoff

from . import keys
from .cron import parse_schedule

MAX_TRIGGERS = 10
MAX_RETRIES = 20
MAX_CANCELS = 5
#: Fields of Inngest's function config with the JSON type its schema gives each (``concurrency`` is
#: a number, a list of limits, or ``{fn, step}``). Flow control is validated, then refused;
#: ``checkpoint`` only tunes how Inngest's server checkpoints, so it is kept and has no effect here.
FLOW_CONTROL: dict[str, tuple[type, ...]] = {
    "concurrency": (int, list, dict),
    "throttle": (dict,),
    "rateLimit": (dict,),
    "idempotency": (str,),
    "debounce": (dict,),
    "batchEvents": (dict,),
    "priority": (dict,),
    "singleton": (dict,),
    "checkpoint": (dict,),
}
#: Deepest nesting a register payload may have (real ones nest about six levels).
MAX_REGISTER_DEPTH = 32
_TYPE_NAMES = {int: "a number", float: "a number", list: "a list", dict: "an object", str: "a string"}


def app_id_of(payload: dict[str, Any]) -> str:
    name = payload.get("appName") or payload.get("appname") or payload.get("app_id")
    if not isinstance(name, str) or not name.strip():
        raise FunctionConfigError("register: appName must be a non-empty string")
    return name


def checksum(payload: dict[str, Any]) -> str:
    """Identifies a registration, so a repeated sync reports ``modified: false``."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def parse_register(payload: Any) -> tuple[str, list[dict[str, Any]]]:
    """(app id, stepq function configs) from a register payload; errors name the bad field."""
    if not isinstance(payload, dict):
        raise FunctionConfigError("register: expected a JSON object")
    try:  # text that cannot be stored (lone surrogates), huge numbers, absurd nesting
        check_json(payload, "", max_depth=MAX_REGISTER_DEPTH)
    except NotJSONError as exc:
        raise FunctionConfigError(str(exc) if exc.path else f"register: {exc.reason}") from None
    app_id = app_id_of(payload)
    functions = payload.get("functions")
    if not isinstance(functions, list):
        raise FunctionConfigError("register: functions must be a list")
    configs = []
    seen: set[str] = set()
    for i, raw in enumerate(functions):
        config = _function(app_id, raw, f"functions[{i}]")
        if config["id"] in seen:
            raise FunctionConfigError(f"functions[{i}].id: {config['id']!r} appears twice")
        seen.add(config["id"])
        configs.append(config)
    return app_id, configs


def _function(app_id: str, raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise FunctionConfigError(f"{where}: expected an object")
    slug = raw.get("id")
    if not isinstance(slug, str) or not slug:
        raise FunctionConfigError(f"{where}.id: a function needs an id")
    name = _optional(raw, "name", (str,), where) or slug
    steps = _optional(raw, "steps", (dict,), where) or {}
    step = steps.get("step")
    if not isinstance(step, dict):
        raise FunctionConfigError(f"{where}.steps.step: missing (it holds the function's URL)")
    runtime = _optional(step, "runtime", (dict,), f"{where}.steps.step") or {}
    url = runtime.get("url")
    parsed = urlparse(url) if isinstance(url, str) else None
    try:
        port_ok = parsed is not None and (parsed.port is None or parsed.port > 0)
    except ValueError:  # a port that is not a number, or over 65535
        port_ok = False
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname or not port_ok:
        raise FunctionConfigError(f"{where}.steps.step.runtime.url: expected an http(s) URL, got {shown(url)}")
    retries = _retries(raw, step, where)
    triggers = _optional(raw, "triggers", (list,), where) or []
    if len(triggers) > MAX_TRIGGERS:
        raise FunctionConfigError(f"{where}.triggers: a list of at most {MAX_TRIGGERS}")
    flow = {}
    for field, types in FLOW_CONTROL.items():
        value = _optional(raw, field, types, where)
        if value is not None:
            flow[field] = value
    # Empty values (inngest-py sends ``concurrency: []`` for failure handlers) and a limit of 0
    # mean none, and are accepted.
    cancel = raw.get("cancel")
    parse_flow_control(flow, prefix=f"{where}.", has_cancel=isinstance(cancel, list) and bool(cancel))
    config: dict[str, Any] = {
        "id": slug,
        "fn_id": slug.removeprefix(f"{app_id}-"),
        "app_id": app_id,
        "name": name,
        "triggers": [_trigger(t, f"{where}.triggers[{j}]") for j, t in enumerate(triggers)],
        "retries": retries,
        "cancel": [_cancel(c, f"{where}.cancel[{j}]") for j, c in enumerate(_list(raw, "cancel", where))],
        "timeouts": _timeouts(_optional(raw, "timeouts", (dict,), where), f"{where}.timeouts"),
        "queue": keys.HTTP_QUEUE_ID,
        "url": url,
        "flow": flow,
    }
    backoff = _optional(raw, "backoff", (dict,), where)  # stepq's SDK says how long to wait between attempts
    if backoff is not None:
        config["backoff"] = _backoff(backoff, f"{where}.backoff")
    if len(config["cancel"]) > MAX_CANCELS:
        raise FunctionConfigError(f"{where}.cancel: at most {MAX_CANCELS} rules")
    return config


def _optional(raw: dict[str, Any], field: str, types: tuple[type, ...], where: str) -> Any:
    """``raw[field]`` when present and not null, refused unless it is one of ``types``."""
    value = raw.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, types):
        expected = " or ".join(_TYPE_NAMES[t] for t in types)
        raise FunctionConfigError(f"{where}.{field}: expected {expected}, got {json_type(value)}")
    return value


def _retries(raw: dict[str, Any], step: dict[str, Any], where: str) -> int:
    """``steps.step.retries.attempts`` (Inngest's name for the retry count), else ``retries``, else 4.
    Both are checked when both are given."""
    policy = _optional(step, "retries", (dict,), f"{where}.steps.step")
    found = [
        (value, field)
        for value, field in (
            (policy.get("attempts") if policy else None, f"{where}.steps.step.retries.attempts"),
            (raw.get("retries"), f"{where}.retries"),
        )
        if value is not None
    ]
    for value, field in found:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
            raise FunctionConfigError(f"{field}: an integer from 0 to {MAX_RETRIES}, got {shown(value)}")
    return int(found[0][0]) if found else 4


def _backoff(raw: dict[str, Any], where: str) -> dict[str, float]:
    for field in ("initial", "maximum"):  # seconds, or a duration string
        _optional(raw, field, (int, float, str), where)
    for field in ("factor", "jitter"):  # numbers only: float("nan") must not sneak in as a string
        _optional(raw, field, (int, float), where)
    try:
        return Backoff.from_dict(raw).to_dict()
    except (ValueError, TypeError, OverflowError, FunctionConfigError) as exc:
        raise FunctionConfigError(f"{where}: {exc}") from None


def _list(raw: dict[str, Any], field: str, where: str) -> list[Any]:
    value: list[Any] = _optional(raw, field, (list,), where) or []
    return value


def _trigger(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise FunctionConfigError(f"{where}: expected an object")
    if isinstance(raw.get("event"), str) and raw["event"]:
        out: dict[str, Any] = {"event": raw["event"]}
        expression = _optional(raw, "expression", (str,), where)
        if expression:
            _compiles(expression, {"event"}, f"{where}.expression")
            out["expression"] = expression
        return out
    if isinstance(raw.get("cron"), str) and raw["cron"]:
        try:
            parse_schedule(raw["cron"])
        except ValueError as exc:
            raise FunctionConfigError(f"{where}.cron: {exc}") from None
        return {"cron": raw["cron"]}
    raise FunctionConfigError(f"{where}: needs an event name or a cron expression")


def _cancel(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or not isinstance(raw.get("event"), str) or not raw["event"]:
        raise FunctionConfigError(f"{where}: needs an event name")
    out: dict[str, Any] = {"event": raw["event"]}
    condition = _optional(raw, "if", (str,), where)
    if condition:
        _compiles(condition, {"event", "async"}, f"{where}.if")
        out["if"] = condition
    timeout = _optional(raw, "timeout", (str,), where)
    if timeout:
        _duration(timeout, f"{where}.timeout")
        out["timeout"] = timeout
    return out


def _timeouts(raw: dict[str, Any] | None, where: str) -> dict[str, str]:
    if not raw:
        return {}
    out = {}
    for field in ("start", "finish"):
        value = _optional(raw, field, (str,), where)  # time strings ("10m"), as Inngest's schema says
        if value:
            _duration(value, f"{where}.{field}")
            out[field] = value
    return out


def _compiles(text: str, variables: set[str], where: str) -> None:
    try:
        compile_expression(text, variables=variables)
    except ExpressionError as exc:
        raise FunctionConfigError(f"{where}: {exc}") from None


def _duration(value: Any, where: str) -> None:
    try:
        to_timedelta(value, what=where)
    except ValueError as exc:
        raise FunctionConfigError(str(exc)) from None
    except OverflowError:  # "99999999999999999d": more days than a timedelta holds
        raise FunctionConfigError(f"{where}: {shown(value)} is too long a duration") from None
