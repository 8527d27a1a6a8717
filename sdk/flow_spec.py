"""One validated spec of a function's flow control, from either way a function is declared.

Two inputs meet here:

- ``create_function``'s option types (``Concurrency``, ``Throttle``...): :func:`options_to_config`
  turns them into Inngest's JSON config form, exactly as inngest-py 0.5 serializes them (durations
  as whole-second strings such as ``"90s"``, ``"2h"``);
- a registered app's function config (``/fn/register``), already in that JSON form.

:func:`parse_flow_control` reads the JSON form into a frozen :class:`FlowControl` (periods in
milliseconds), refusing bad input with a :class:`FunctionConfigError` whose message starts with
the field's path (``functions[0].throttle.period: ...``, ``create_function('f'): concurrency[2]: ...``).

The rules are Inngest's (``pkg/inngest``, its docs, and /work/shared/reference/flow-control.md);
where Inngest is silent or lenient, the choice made is said beside the rule. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from .durations import parse_duration, to_duration_str, to_timedelta
from .errors import FunctionConfigError
from .expressions import ExpressionError, compile_expression
from .flow_control import Batch, Concurrency, Debounce, Priority, RateLimit, RunConcurrency, Singleton, Throttle
from .jsonvalue import json_type, shown

__all__ = [
    "BatchSpec",
    "ConcurrencyLimit",
    "DebounceSpec",
    "FlowControl",
    "PrioritySpec",
    "RateLimitSpec",
    "SingletonSpec",
    "ThrottleSpec",
    "options_to_config",
    "parse_flow_control",
]

#: The JSON config fields this module reads, in Inngest's spelling.
CONFIG_FIELDS = (
    "concurrency",
    "throttle",
    "rateLimit",
    "debounce",
    "batchEvents",
    "priority",
    "idempotency",
    "singleton",
)

#: At most this many concurrency limits per level (``consts.MaxConcurrencyLimits``).
MAX_CONCURRENCY_LIMITS = 2
#: Largest limit, burst or size stepq stores: Inngest sets none, but counts live in Redis and Lua,
#: where a 32-bit ceiling keeps arithmetic exact; no real limit comes near it.
MAX_COUNT = 2**31 - 1

_SECOND = 1000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR

#: Throttle period: 1 s to 7 d (Inngest's throttle docs).
THROTTLE_PERIOD_MS = (_SECOND, 7 * _DAY)
#: Rate limit period: at most 24 h (``RateLimit.IsValid``: ``FunctionIdempotencyPeriod``); at least
#: 1 s, Inngest's smallest granularity for every flow-control period.
RATE_LIMIT_PERIOD_MS = (_SECOND, _DAY)
#: Debounce period and timeout: 1 s to 7 d (``consts.MinDebouncePeriod``, ``MaxDebouncePeriod``).
DEBOUNCE_PERIOD_MS = (_SECOND, 7 * _DAY)
#: Batch timeout: at least 1 s (``EventBatchConfig.IsValid``). Inngest caps it per plan (its limits
#: page: 30 s free, 5 min on Pro and Business; its self-hosted default is 60 s): stepq takes the
#: largest documented cap, 5 min.
BATCH_TIMEOUT_MS = (_SECOND, 5 * _MINUTE)
#: Batch size: at least 2 (a batch of 1 is no batch, ``IsValid``); at most 500, the largest
#: documented plan cap (5 free, 100 Pro, 500 Business).
BATCH_SIZE = (2, 500)

Scope = Literal["fn", "env", "account"]
_SCOPES: tuple[Scope, ...] = ("fn", "env", "account")
_MODES = ("skip", "cancel")

#: JSON names shown as create_function's keyword names in its errors.
PYTHON_NAMES = {"rateLimit": "rate_limit", "batchEvents": "batch_events", "maxSize": "max_size", "if": "if_exp"}


# --------------------------------------------------------------------------------------------
# The spec


@dataclasses.dataclass(frozen=True, slots=True)
class ConcurrencyLimit:
    """At most ``limit`` at once per value of ``key`` (a CEL expression) within ``scope``."""

    limit: int
    key: str | None = None
    scope: Scope = "fn"


@dataclasses.dataclass(frozen=True, slots=True)
class ThrottleSpec:
    """At most ``limit`` run starts per ``period_ms`` (GCRA with ``burst``); the rest wait."""

    limit: int
    period_ms: int
    key: str | None = None
    burst: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimitSpec:
    """At most ``limit`` runs per ``period_ms``; events over it start no run."""

    limit: int
    period_ms: int
    key: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class DebounceSpec:
    """One run with the last event once ``period_ms`` passes quietly; at most ``timeout_ms`` late."""

    period_ms: int
    key: str | None = None
    timeout_ms: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class BatchSpec:
    """One run per batch of up to ``max_size`` events, started at most ``timeout_ms`` after the first."""

    max_size: int
    timeout_ms: int
    key: str | None = None
    if_exp: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PrioritySpec:
    """``run``: a CEL expression giving the seconds by which a run goes ahead of others."""

    run: str


@dataclasses.dataclass(frozen=True, slots=True)
class SingletonSpec:
    """One active run per ``key``: a new one is skipped, or cancels the old one (``mode``)."""

    mode: Literal["skip", "cancel"]
    key: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class FlowControl:
    """A function's flow control, validated. Empty (falsy) when it has none.

    ``concurrency`` limits executing steps (Inngest's list form, or ``step`` in the
    ``{"fn": [...], "step": [...]}`` form); ``run_concurrency`` limits running runs (``fn``)."""

    concurrency: tuple[ConcurrencyLimit, ...] = ()
    run_concurrency: tuple[ConcurrencyLimit, ...] = ()
    throttle: ThrottleSpec | None = None
    rate_limit: RateLimitSpec | None = None
    debounce: DebounceSpec | None = None
    batch: BatchSpec | None = None
    priority: PrioritySpec | None = None
    idempotency: str | None = None
    singleton: SingletonSpec | None = None

    def given(self) -> list[str]:
        """The JSON config fields that carry a limit, in Inngest's spelling."""
        present = {
            "concurrency": bool(self.concurrency or self.run_concurrency),
            "throttle": self.throttle is not None,
            "rateLimit": self.rate_limit is not None,
            "debounce": self.debounce is not None,
            "batchEvents": self.batch is not None,
            "priority": self.priority is not None,
            "idempotency": self.idempotency is not None,
            "singleton": self.singleton is not None,
        }
        return [name for name in CONFIG_FIELDS if present[name]]

    def __bool__(self) -> bool:
        return bool(self.given())



# --------------------------------------------------------------------------------------------
# SDK options -> JSON config


def options_to_config(
    *,
    label: str,
    batch_events: Batch | None = None,
    concurrency: Sequence[Concurrency | RunConcurrency] | None = None,
    debounce: Debounce | None = None,
    idempotency: str | None = None,
    priority: Priority | None = None,
    rate_limit: RateLimit | None = None,
    singleton: Singleton | None = None,
    throttle: Throttle | None = None,
) -> dict[str, Any]:
    """create_function's options as Inngest's JSON config, as inngest-py serializes them.

    Only the options given appear. Durations (an int of milliseconds, a timedelta) become
    whole-second strings ("5s", "90s", "2h"); a duration that is not whole seconds is refused, as
    inngest-py refuses it. ``label`` starts every error message (``create_function('f'): ``).
    Values are not checked here beyond what serializing needs: :func:`parse_flow_control` does it.
    """
    out: dict[str, Any] = {}
    if concurrency is not None:
        if not isinstance(concurrency, list | tuple):
            raise FunctionConfigError(f"{label}concurrency: expected a list of Concurrency, got {shown(concurrency)}")
        levels: dict[str, list[dict[str, Any]]] = {"fn": [], "step": []}
        for i, item in enumerate(concurrency):
            if not isinstance(item, RunConcurrency):
                _check_type(item, Concurrency, f"{label}concurrency[{i}]")
            level = "fn" if isinstance(item, RunConcurrency) else "step"
            levels[level].append({"key": item.key, "limit": item.limit, "scope": item.scope})
        # Inngest's list form unless a run-level limit needs its {"fn": [...], "step": [...]} form
        out["concurrency"] = levels if levels["fn"] else levels["step"]
    if throttle is not None:
        _check_type(throttle, Throttle, f"{label}throttle")
        out["throttle"] = {
            "key": throttle.key,
            "limit": throttle.limit,
            "period": _duration_str(throttle.period, f"{label}throttle.period"),
            "burst": throttle.burst,
        }
    if rate_limit is not None:
        _check_type(rate_limit, RateLimit, f"{label}rate_limit")
        out["rateLimit"] = {
            "key": rate_limit.key,
            "limit": rate_limit.limit,
            "period": _duration_str(rate_limit.period, f"{label}rate_limit.period"),
        }
    if debounce is not None:
        _check_type(debounce, Debounce, f"{label}debounce")
        out["debounce"] = {
            "key": debounce.key,
            "period": _duration_str(debounce.period, f"{label}debounce.period"),
            "timeout": _optional_duration_str(debounce.timeout, f"{label}debounce.timeout"),
        }
    if batch_events is not None:
        _check_type(batch_events, Batch, f"{label}batch_events")
        out["batchEvents"] = {
            "maxSize": batch_events.max_size,
            "timeout": _optional_duration_str(batch_events.timeout, f"{label}batch_events.timeout"),
            "key": batch_events.key,
            "if": batch_events.if_exp,
        }
    if priority is not None:
        _check_type(priority, Priority, f"{label}priority")
        out["priority"] = {"run": priority.run}
    if idempotency is not None:
        out["idempotency"] = idempotency
    if singleton is not None:
        _check_type(singleton, Singleton, f"{label}singleton")
        out["singleton"] = {"key": singleton.key, "mode": singleton.mode}
    return out


def _check_type(value: object, kind: type, where: str) -> None:
    if not isinstance(value, kind):
        raise FunctionConfigError(f"{where}: expected a stepq.{kind.__name__}, got {shown(value)}")


def _duration_str(value: Any, where: str) -> str:
    try:
        delta = to_timedelta(value, what=where)
    except ValueError as exc:
        raise FunctionConfigError(str(exc)) from None
    if delta % dt.timedelta(seconds=1):
        ms = delta / dt.timedelta(milliseconds=1)
        raise FunctionConfigError(
            f"{where}: must be a whole number of seconds, got {ms:g} ms (an int duration is milliseconds, "
            "as in inngest-py)"
        )
    return to_duration_str(delta)


def _optional_duration_str(value: Any, where: str) -> str | None:
    return None if value is None else _duration_str(value, where)


# --------------------------------------------------------------------------------------------
# JSON config -> spec


def parse_flow_control(
    config: Mapping[str, Any],
    *,
    prefix: str,
    python_names: bool = False,
    has_cancel: bool | None = None,
) -> FlowControl:
    """The flow control of one function config (Inngest's JSON form), validated.

    ``prefix`` starts every error message, before the field's path: ``"functions[0]."`` for a
    registered config, ``"create_function('f'): "`` for the SDK (then ``python_names`` shows
    ``rate_limit`` rather than ``rateLimit``). ``has_cancel`` says whether the function has cancel
    rules (batching refuses them); by default it is read from ``config["cancel"]``.

    Absent, null and empty values (``[]``, ``{}``; inngest-py sends ``concurrency: []`` for failure
    handlers) mean none. Other fields of ``config`` are ignored.
    """
    at = _Path(prefix, python_names)
    if has_cancel is None:
        cancel = config.get("cancel")
        has_cancel = isinstance(cancel, list) and bool(cancel)
    present = {name: config.get(name) for name in CONFIG_FIELDS if not _empty(config.get(name))}

    step_limits: tuple[ConcurrencyLimit, ...] = ()
    run_limits: tuple[ConcurrencyLimit, ...] = ()
    if "concurrency" in present:
        step_limits, run_limits = _concurrency(present["concurrency"], at.child("concurrency"))
    spec = FlowControl(
        concurrency=step_limits,
        run_concurrency=run_limits,
        throttle=_parsed(present, "throttle", _throttle, at),
        rate_limit=_parsed(present, "rateLimit", _rate_limit, at),
        debounce=_parsed(present, "debounce", _debounce, at),
        batch=_parsed(present, "batchEvents", _batch, at),
        priority=_parsed(present, "priority", _priority, at),
        idempotency=_parsed(present, "idempotency", _idempotency, at),
        singleton=_parsed(present, "singleton", _singleton, at),
    )
    _check_combinations(spec, has_cancel, at)
    return spec


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, list | dict) and not value)


def _parsed(present: dict[str, Any], name: str, parse: Callable[[Any, _Path], Any], at: _Path) -> Any:
    return parse(present[name], at.child(name)) if name in present else None


def _check_combinations(spec: FlowControl, has_cancel: bool, at: _Path) -> None:
    if spec.batch is not None:
        # Inngest's server refuses batching with each of these (pkg/inngest/function.go, and the
        # reference notes): a batch run has many events, so none of them has one key or priority.
        others = [
            ("cancel", has_cancel),
            ("debounce", spec.debounce is not None),
            ("singleton", spec.singleton is not None),
            ("priority", spec.priority is not None),
        ]
        for name, given in others:
            if given:
                raise FunctionConfigError(
                    f"{at.child('batchEvents')}: batching cannot be combined with {at.child(name).relative()} "
                    "(Inngest refuses the pair); remove one of them"
                )
    if spec.idempotency is not None and spec.rate_limit is not None:
        # Inngest implements idempotency as a rate limit of 1 per 24 h and replaces the function's
        # own rateLimit with it (pkg/sdk/function.go): one of the two would silently not apply.
        raise FunctionConfigError(
            f"{at.child('idempotency')}: cannot be combined with {at.child('rateLimit').relative()} (Inngest "
            "replaces the rate limit with the idempotency key's, so one would not apply); keep one of them"
        )


class _Path:
    """A field's path for error messages: ``functions[0].throttle.period``."""

    __slots__ = ("_parts", "_prefix", "_python")

    def __init__(self, prefix: str, python: bool, parts: tuple[str, ...] = ()) -> None:
        self._prefix, self._python, self._parts = prefix, python, parts

    def child(self, name: str) -> _Path:
        shown = PYTHON_NAMES.get(name, name) if self._python else name
        part = f".{shown}" if self._parts else shown
        return _Path(self._prefix, self._python, (*self._parts, part))

    def index(self, i: int) -> _Path:
        return _Path(self._prefix, self._python, (*self._parts, f"[{i}]"))

    def error(self, message: str) -> FunctionConfigError:
        return FunctionConfigError(f"{self}: {message}")

    def __str__(self) -> str:
        return self._prefix + self.relative()

    def relative(self) -> str:
        """The path without the prefix: how an error names a second field of the same function."""
        return "".join(self._parts)


def _object(raw: Any, at: _Path, fields: tuple[str, ...]) -> dict[str, Any]:
    """``raw`` as an object whose fields are all known; null fields are dropped (absent).

    Unknown fields are refused rather than ignored: a misspelt or newer option must not pass
    for one that stepq keeps."""
    if not isinstance(raw, dict):
        raise at.error(f"expected an object, got {json_type(raw)}")
    unknown = sorted(str(name) for name in raw if name not in fields)
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        allowed = ", ".join(fields)
        raise at.error(f"unknown field{'s' if len(unknown) > 1 else ''} {names} (known here: {allowed})")
    return {name: value for name, value in raw.items() if value is not None}


def _count(raw: dict[str, Any], name: str, at: _Path, *, minimum: int, maximum: int = MAX_COUNT) -> int:
    if name not in raw:
        raise at.child(name).error("required")
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise at.child(name).error(f"expected an integer, got {json_type(value)}")
    if not minimum <= value <= maximum:
        raise at.child(name).error(f"an integer from {minimum} to {maximum}, got {shown(value)}")
    return value


def _period(raw: dict[str, Any], name: str, at: _Path, bounds: tuple[int, int], *, required: bool = True) -> int | None:
    """A duration string ("5s", "1h30m") in whole seconds within ``bounds``, as milliseconds."""
    where = at.child(name)
    if name not in raw:
        if required:
            raise where.error("required")
        return None
    value = raw[name]
    if not isinstance(value, str):
        raise where.error(f'expected a duration string such as "30s" or "5m", got {json_type(value)}')
    try:
        delta = parse_duration(value, what=str(where))
    except ValueError as exc:
        raise FunctionConfigError(str(exc)) from None
    ms = delta // dt.timedelta(milliseconds=1)
    if delta % dt.timedelta(seconds=1):
        raise where.error(f"must be a whole number of seconds, got {shown(value)}")
    low, high = bounds
    if not low <= ms <= high:
        shown_low, shown_high = (to_duration_str(dt.timedelta(milliseconds=b)) for b in bounds)
        raise where.error(f"must be from {shown_low} to {shown_high}, got {shown(value)}")
    return ms


def _expression(raw: dict[str, Any], name: str, at: _Path, *, required: bool = False) -> str | None:
    """A CEL expression over ``event``, compiled to check it. An empty string is no expression
    (some SDKs send one for "no key", which Inngest reads as none)."""
    where = at.child(name)
    value = raw.get(name)
    if value is None or value == "":
        if required:
            raise where.error("required")
        return None
    return _compiled(value, where)


def _compiled(value: Any, where: _Path) -> str:
    if not isinstance(value, str):
        raise where.error(f"expected a CEL expression string, got {json_type(value)}")
    try:
        compile_expression(value, variables={"event"})
    except ExpressionError as exc:
        raise where.error(str(exc)) from None
    return value


def _concurrency(raw: Any, at: _Path) -> tuple[tuple[ConcurrencyLimit, ...], tuple[ConcurrencyLimit, ...]]:
    """(step-level limits, run-level limits). Inngest's schema allows a number (one fn-scoped
    limit), one limit object, a list of them, or ``{"fn": [...], "step": [...]}`` (run-level and
    step-level limits, PR #3881)."""
    if isinstance(raw, bool):
        raise at.error("expected a number, a list of limits or an object, got a boolean")
    if isinstance(raw, int):
        return _limits([{"limit": raw}], at, number=True), ()
    if isinstance(raw, list):
        return _limits(raw, at), ()
    if isinstance(raw, dict) and raw and set(raw) <= {"fn", "step"}:
        levels: dict[str, tuple[ConcurrencyLimit, ...]] = {}
        for level in ("fn", "step"):
            value = raw.get(level)
            if value is None:
                levels[level] = ()
            elif isinstance(value, list):
                levels[level] = _limits(value, at.child(level))
            else:
                raise at.child(level).error(f"expected a list of limits, got {json_type(value)}")
        return levels["step"], levels["fn"]
    if isinstance(raw, dict):
        return _limits([raw], at, single=True), ()
    raise at.error(f"expected a number, a list of limits or an object, got {json_type(raw)}")


def _limits(items: list[Any], at: _Path, *, number: bool = False, single: bool = False) -> tuple[ConcurrencyLimit, ...]:
    if len(items) > MAX_CONCURRENCY_LIMITS:
        raise at.error(f"at most {MAX_CONCURRENCY_LIMITS} concurrency limits, got {len(items)}")
    out = []
    for i, item in enumerate(items):
        where = at if number or single else at.index(i)
        limit = _limit(item, where, number=number)
        if limit is not None:
            out.append(limit)
    return tuple(out)


def _limit(raw: Any, at: _Path, *, number: bool) -> ConcurrencyLimit | None:
    """One limit; None for a limit of 0 or none. Inngest's SDKs document 0 (or no limit) as "no
    limit set" and its server reads it so, so stepq drops it, after checking the rest."""
    if number:
        value = raw["limit"]
        if not 0 <= value <= MAX_COUNT:
            raise at.error(f"an integer from 0 (no limit) to {MAX_COUNT}, got {shown(value)}")
        return ConcurrencyLimit(limit=value) if value else None
    fields = _object(raw, at, ("limit", "key", "scope"))
    limit = _count(fields, "limit", at, minimum=0) if "limit" in fields else 0
    scope = fields.get("scope", "fn")
    if scope not in _SCOPES:
        raise at.child("scope").error(f"one of {', '.join(_SCOPES)}, got {shown(scope)}")
    key = _expression(fields, "key", at)
    if scope != "fn" and key is None:
        raise at.child("key").error(f"required for scope {scope!r} (a limit shared across functions needs a key)")
    return ConcurrencyLimit(limit=limit, key=key, scope=scope) if limit else None


def _throttle(raw: Any, at: _Path) -> ThrottleSpec:
    fields = _object(raw, at, ("limit", "period", "key", "burst"))
    limit = _count(fields, "limit", at, minimum=1)
    period = _period(fields, "period", at, THROTTLE_PERIOD_MS)
    burst = _count(fields, "burst", at, minimum=1) if "burst" in fields else 1  # null or absent: 1
    assert period is not None
    return ThrottleSpec(limit=limit, period_ms=period, key=_expression(fields, "key", at), burst=burst)


def _rate_limit(raw: Any, at: _Path) -> RateLimitSpec:
    fields = _object(raw, at, ("limit", "period", "key"))
    limit = _count(fields, "limit", at, minimum=1)
    period = _period(fields, "period", at, RATE_LIMIT_PERIOD_MS)
    assert period is not None
    return RateLimitSpec(limit=limit, period_ms=period, key=_expression(fields, "key", at))


def _debounce(raw: Any, at: _Path) -> DebounceSpec:
    fields = _object(raw, at, ("period", "key", "timeout"))
    period = _period(fields, "period", at, DEBOUNCE_PERIOD_MS)
    timeout = _period(fields, "timeout", at, DEBOUNCE_PERIOD_MS, required=False)
    assert period is not None
    if timeout is not None and timeout < period:
        # Inngest does not check this, but a cap shorter than the quiet period leaves the period
        # meaningless (every run would start at the timeout): refused rather than guessed at.
        raise at.child("timeout").error(
            f"must be at least the period ({to_duration_str(dt.timedelta(milliseconds=period))}), "
            f"got {shown(fields['timeout'])}"
        )
    return DebounceSpec(period_ms=period, key=_expression(fields, "key", at), timeout_ms=timeout)


def _batch(raw: Any, at: _Path) -> BatchSpec:
    fields = _object(raw, at, ("maxSize", "timeout", "key", "if"))
    low, high = BATCH_SIZE
    size = _count(fields, "maxSize", at, minimum=low, maximum=high)
    timeout = _period(fields, "timeout", at, BATCH_TIMEOUT_MS)
    assert timeout is not None
    return BatchSpec(
        max_size=size, timeout_ms=timeout, key=_expression(fields, "key", at), if_exp=_expression(fields, "if", at)
    )


def _priority(raw: Any, at: _Path) -> PrioritySpec:
    fields = _object(raw, at, ("run",))
    run = _expression(fields, "run", at, required=True)
    assert run is not None
    return PrioritySpec(run=run)


def _idempotency(raw: Any, at: _Path) -> str:
    return _compiled(raw, at)


def _singleton(raw: Any, at: _Path) -> SingletonSpec:
    fields = _object(raw, at, ("key", "mode"))
    mode = fields.get("mode")
    if mode is None:
        raise at.child("mode").error("required (skip or cancel)")
    if mode not in _MODES:
        raise at.child("mode").error(f"one of skip, cancel, got {shown(mode)}")
    return SingletonSpec(mode=mode, key=_expression(fields, "key", at))
