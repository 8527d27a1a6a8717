"""Apps that serve their functions over HTTP register them with Inngest's sync payload.

``POST /fn/register`` carries ``{url, appName, sdk, framework, functions: [...]}`` (protocol §4.2).
Each function becomes a stepq function record whose runs go to the shared ``@http`` queue, where
``stepq worker --http`` invokes them at the URL they registered. Flow-control fields (concurrency,
throttle, debounce, batching, priority...) are stored with the config for later.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urlparse

from runtime import keys
from sdk.durations import to_timedelta
from sdk.errors import FunctionConfigError

MAX_TRIGGERS = 10
MAX_RETRIES = 20
MAX_CANCELS = 5
#: Stored as they come, for features stepq does not apply yet.
FLOW_CONTROL = (
    "concurrency",
    "throttle",
    "rateLimit",
    "idempotency",
    "debounce",
    "batchEvents",
    "priority",
    "singleton",
    "checkpoint",
)


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
    step = ((raw.get("steps") or {}).get("step")) if isinstance(raw.get("steps"), dict) else None
    if not isinstance(step, dict):
        raise FunctionConfigError(f"{where}.steps.step: missing (it holds the function's URL)")
    runtime = step.get("runtime") or {}
    url = runtime.get("url") if isinstance(runtime, dict) else None
    parsed = urlparse(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise FunctionConfigError(f"{where}.steps.step.runtime.url: expected an http(s) URL, got {url!r}")
    retries = (step.get("retries") or {}).get("attempts", raw.get("retries", 4))
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise FunctionConfigError(f"{where}.steps.step.retries.attempts: an integer from 0 to {MAX_RETRIES}")
    triggers = raw.get("triggers") or []
    if not isinstance(triggers, list) or len(triggers) > MAX_TRIGGERS:
        raise FunctionConfigError(f"{where}.triggers: a list of at most {MAX_TRIGGERS}")
    config: dict[str, Any] = {
        "id": slug,
        "fn_id": slug.removeprefix(f"{app_id}-"),
        "app_id": app_id,
        "name": raw.get("name") or slug,
        "triggers": [_trigger(t, f"{where}.triggers[{j}]") for j, t in enumerate(triggers)],
        "retries": retries,
        "cancel": [_cancel(c, f"{where}.cancel[{j}]") for j, c in enumerate(_list(raw, "cancel", where))],
        "timeouts": _timeouts(raw.get("timeouts"), f"{where}.timeouts"),
        "queue": keys.HTTP_QUEUE_ID,
        "url": url,
        "flow": {k: raw[k] for k in FLOW_CONTROL if raw.get(k) is not None},
    }
    if isinstance(raw.get("backoff"), dict):  # stepq's SDK says how long to wait between attempts
        config["backoff"] = _backoff(raw["backoff"], f"{where}.backoff")
    if len(config["cancel"]) > MAX_CANCELS:
        raise FunctionConfigError(f"{where}.cancel: at most {MAX_CANCELS} rules")
    return config


def _backoff(raw: dict[str, Any], where: str) -> dict[str, float]:
    from sdk.retry import Backoff

    try:
        return Backoff.from_dict(raw).to_dict()
    except (ValueError, TypeError) as exc:
        raise FunctionConfigError(f"{where}: {exc}") from None


def _list(raw: dict[str, Any], field: str, where: str) -> list[Any]:
    value = raw.get(field) or []
    if not isinstance(value, list):
        raise FunctionConfigError(f"{where}.{field}: expected a list")
    return value


def _trigger(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise FunctionConfigError(f"{where}: expected an object")
    if isinstance(raw.get("event"), str) and raw["event"]:
        out: dict[str, Any] = {"event": raw["event"]}
        if raw.get("expression"):
            _compiles(str(raw["expression"]), {"event"}, f"{where}.expression")
            out["expression"] = raw["expression"]
        return out
    if isinstance(raw.get("cron"), str) and raw["cron"]:
        from runtime.cron import parse_schedule

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
    if raw.get("if"):
        _compiles(str(raw["if"]), {"event", "async"}, f"{where}.if")
        out["if"] = raw["if"]
    if raw.get("timeout"):
        _duration(raw["timeout"], f"{where}.timeout")
        out["timeout"] = raw["timeout"]
    return out


def _timeouts(raw: Any, where: str) -> dict[str, str]:
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise FunctionConfigError(f"{where}: expected an object")
    out = {}
    for field in ("start", "finish"):
        if raw.get(field):
            _duration(raw[field], f"{where}.{field}")
            out[field] = raw[field]
    return out


def _compiles(text: str, variables: set[str], where: str) -> None:
    from sdk.expressions import ExpressionError, compile_expression

    try:
        compile_expression(text, variables=variables)
    except ExpressionError as exc:
        raise FunctionConfigError(f"{where}: {exc}") from None


def _duration(value: Any, where: str) -> None:
    try:
        to_timedelta(value, what=where)
    except ValueError as exc:
        raise FunctionConfigError(str(exc)) from None
