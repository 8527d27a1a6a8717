"""The step tools user code calls: ``ctx.step.run``, ``sleep``, ``sleep_until``, ``wait_for_event``,
``invoke``, ``invoke_by_id`` and ``send_event``.

``Step`` serves ``async def`` functions, ``StepSync`` plain ``def`` functions (run in a thread). Both
share ``_StepCore``: the memo lookup before a step, the opcode after it.

Durations (``sleep``'s, and the ``timeout`` of waits and invokes) are a ``timedelta``, a string like
"500ms", "30s", "5m", "1h30m", or an ``int`` of milliseconds as in inngest-py (``sleep("s", 1000)``
sleeps one second); a float is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import inspect
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, NoReturn, TypeVar, TypeVarTuple, cast, overload

from .durations import DurationLike, parse_iso, to_duration_str, to_iso, to_timedelta
from .errors import NonRetriableError, RetryAfterError, StepOutputError, error_payload
from .event import Event
from .function import Function
from .opcodes import Op, Opcode
from .replay import Interrupt, Replay, Skip, unwrap_memo
from .retry import Backoff
from .serializer import NOT_SET, Serializer, no_serializer

#: Sends events for ``step.send_event``; the client's ``send``.
Sender = Callable[[Sequence[Event]], Coroutine[Any, Any, list[str]]]

T = TypeVar("T")
#: A sender, async or sync.
S = TypeVar("S")
#: The arguments ``step.run`` passes to its handler, typed against the handler's parameters.
Args = TypeVarTuple("Args")

#: Sleeps and waits longer than this are refused, as in Inngest.
MAX_SLEEP = dt.timedelta(days=366)

_MISSING = object()


class _StepCore:
    def __init__(self, replay: Replay, sender: Sender | None = None, serializer: Serializer | None = None) -> None:
        self._replay = replay
        self._sender = sender
        self._serializer = serializer

    def _converter(self, step_id: str, output_type: object) -> Serializer | None:
        """The serializer for a step given an ``output_type``; None when it has none."""
        if output_type is NOT_SET:
            return None
        if self._serializer is None:
            raise NonRetriableError(str(no_serializer(f"step {step_id!r}")))
        return self._serializer

    def _lookup(self, step_id: str) -> tuple[str, int | None, Any]:
        """The step's key and index, and its memo (or _MISSING)."""
        key, index, found, memo = self._replay.lookup(step_id)
        return key, index, memo if found else _MISSING

    async def _memo_used(self) -> None:
        """After a memo hit: middleware hears when the replay is over (nothing to do without it)."""
        if self._replay.hooks is not None:
            await self._replay.memo_used()

    def _memo_used_sync(self) -> None:
        if self._replay.hooks is not None:
            self._replay.memo_used_sync()

    async def _new_code(self) -> None:
        """Before a new step's code runs: middleware hears that the replay is over."""
        if self._replay.hooks is not None:
            await self._replay.new_code()

    def _new_code_sync(self) -> None:
        if self._replay.hooks is not None:
            self._replay.new_code_sync()

    @staticmethod
    def _memo_value(step_id: str, memo: Any, converter: Serializer | None, output_type: object) -> Any:
        """What a memoized ``step.run`` returns (or the StepError it raises)."""
        # The common case inlined: replays pass here once per step.
        value = memo["data"] if type(memo) is dict and len(memo) == 1 and "data" in memo else unwrap_memo(step_id, memo)
        return value if converter is None else converter.deserialize(value, output_type)

    def _plan_or_run(self, step_id: str, key: str, index: int | None) -> None:
        """Return when the new step may run now; otherwise stop user code with a StepPlanned."""
        if not self._replay.may_run_now(key, step_id):
            raise Interrupt([Opcode(Op.STEP_PLANNED, key, step_id, index, opts={"type": "step.run"})])

    def _ran(
        self,
        step_id: str,
        key: str,
        index: int | None,
        result: Any,
        policy: StepPolicy | None,
        converter: Serializer | None,
        output_type: object,
    ) -> NoReturn:
        """The handler returned ``result``: stop user code with the step's output (or its failure)."""
        if converter is not None:
            try:
                result = converter.serialize(result, output_type)
            except BaseException as exc:
                self._failed(step_id, key, index, exc, policy)
        try:
            data = self._replay.check_output(step_id, result)
        except StepOutputError as exc:
            self._failed(step_id, key, index, exc)
        raise Interrupt([Opcode(Op.STEP_RUN, key, step_id, index, data=data)])

    def _failed(
        self, step_id: str, key: str, index: int | None, exc: BaseException, policy: StepPolicy | None = None
    ) -> NoReturn:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise exc
        if isinstance(exc, Interrupt | Skip):
            raise NonRetriableError(f"step {step_id!r} called another step inside its handler; steps cannot nest")
        if isinstance(exc, NonRetriableError):
            # fails the run at once, as in Inngest's Python SDK; the engine names this step with it
            self._replay.raised_in_step(exc, key, step_id)
            raise exc
        request = self._replay.request
        max_attempts = self._replay.max_attempts
        if policy is not None and policy.retries is not None:
            max_attempts = policy.retries + 1
        final = isinstance(exc, StepOutputError) or request.attempt + 1 >= max_attempts
        op = Op.STEP_FAILED if final else Op.STEP_ERROR
        retry_after = exc.retry_after if isinstance(exc, RetryAfterError) and not final else None
        opts = policy.to_opts() if policy is not None else None
        raise Interrupt([Opcode(op, key, step_id, index, error=error_payload(exc), opts=opts)], retry_after)

    def _sleep_op(self, step_id: str, until: dt.datetime | None, delta: dt.timedelta | None) -> None:
        """Return after a memoized sleep; otherwise stop user code with the sleep's opcode."""
        key, index, memo = self._lookup(step_id)
        if memo is not _MISSING:
            return
        self._replay.may_run_now(key, step_id)  # enforces targeting and history; a sleep never runs inline
        if delta is not None:
            if delta > MAX_SLEEP:
                raise NonRetriableError(f"step {step_id!r}: sleeps are limited to {MAX_SLEEP.days} days")
            name = to_duration_str(delta)
        else:
            assert until is not None
            name = to_iso(until)
        raise Interrupt([Opcode(Op.SLEEP, key, step_id, index, name=name, opts={"duration": name})])

    def _wait_op(self, step_id: str, event: str, timeout: DurationLike, if_exp: str | None) -> Event | None:
        """The memoized wait's event (None: it timed out); otherwise stop user code with the wait."""
        key, index, memo = self._lookup(step_id)
        if memo is not _MISSING:
            return _event_or_none(memo)
        if not isinstance(event, str) or not event:
            raise ValueError(f"step {step_id!r}: wait_for_event needs an event name")
        delta = to_timedelta(timeout, what=f"step {step_id!r} wait_for_event timeout")
        if delta > MAX_SLEEP:
            raise NonRetriableError(f"step {step_id!r}: waits are limited to {MAX_SLEEP.days} days")
        self._replay.may_run_now(key, step_id)
        opts: dict[str, Any] = {"event": event, "timeout": to_duration_str(delta)}
        if if_exp:
            opts["if"] = if_exp
        raise Interrupt([Opcode(Op.WAIT_FOR_EVENT, key, step_id, index, name=event, opts=opts)])

    def _invoke_op(
        self,
        step_id: str,
        function: Function | str,
        data: Mapping[str, object] | None,
        timeout: DurationLike | None,
        v: str | None,
        app_id: str | None = None,
    ) -> Any:
        """The invoke's memo (read by ``_invoked`` once the hooks heard of it), or an Interrupt asking
        for the invoke of ``function`` (by id: of ``app_id``, default this run's app)."""
        function_id = _function_id(function, app_id or self._replay.app_id)
        key, index, memo = self._lookup(step_id)
        if memo is not _MISSING:
            return memo
        self._replay.may_run_now(key, step_id)
        payload: dict[str, Any] = {"data": dict(data or {})}
        if v is not None:
            payload["v"] = v
        opts: dict[str, Any] = {"function_id": function_id, "payload": payload}
        if timeout is not None:
            opts["timeout"] = to_duration_str(to_timedelta(timeout, what=f"step {step_id!r} invoke timeout"))
        raise Interrupt([Opcode(Op.INVOKE_FUNCTION, key, step_id, index, opts=opts)])

    @staticmethod
    def _invoked(step_id: str, function: Function[T], memo: Any) -> T:
        """The invoked function's output (or the StepError its failure raises), typed as its return."""
        output: T = function.deserialize_output(unwrap_memo(step_id, memo))  # type: ignore[assignment]
        return output

    @staticmethod
    def _send_batch(step_id: str, sender: S | None, events: Event | Sequence[Event]) -> tuple[S, list[Event]]:
        """``send_event``'s sender and events; a function not created by a Client has no sender."""
        if sender is None:
            raise NonRetriableError(f"step {step_id!r}: send_event needs a function created by a Client")
        return sender, [events] if isinstance(events, Event) else list(events)


@dataclasses.dataclass(frozen=True, slots=True)
class StepPolicy:
    """A step's own retry policy (``step.run(..., retries=, backoff=)``), carried on its opcodes so
    that the runtime retries it by these rules rather than the function's."""

    retries: int | None
    backoff: Backoff | None

    @classmethod
    def of(cls, step_id: str, retries: int | None, backoff: Backoff | None) -> StepPolicy | None:
        if retries is None and backoff is None:
            return None
        valid = isinstance(retries, int) and not isinstance(retries, bool) and 0 <= retries <= 20
        if retries is not None and not valid:
            raise NonRetriableError(f"step {step_id!r}: retries must be an int from 0 to 20, got {retries!r}")
        if backoff is not None and not isinstance(backoff, Backoff):
            raise NonRetriableError(f"step {step_id!r}: backoff must be a stepq.Backoff, got {backoff!r}")
        return cls(retries, backoff)

    def to_opts(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"type": "step.run"}
        if self.retries is not None:
            opts["retries"] = self.retries
        if self.backoff is not None:
            opts["backoff"] = self.backoff.to_dict()
        return opts


def _event_or_none(memo: Any) -> Event | None:
    """A wait's memo: the matching event (unwrapped, as Inngest stores it) or null on timeout."""
    if not isinstance(memo, dict):
        return None
    fields = {k: memo[k] for k in ("name", "data", "id", "ts", "v", "user") if k in memo}
    fields["data"] = fields.get("data") or {}
    fields["user"] = fields.get("user") or {}
    fields["id"] = fields.get("id") or ""
    fields["ts"] = fields.get("ts") or 0
    return Event(**fields)


def _function_id(function: Function | str, app_id: str | None = None) -> str:
    """The app-qualified id an invoke names: a Function's slug, or ``app_id-function_id``."""
    if isinstance(function, str):
        return f"{app_id}-{function}" if app_id else function
    return function.slug


def _until(step_id: str, until: dt.datetime | str) -> dt.datetime:
    moment = parse_iso(until) if isinstance(until, str) else until
    if not isinstance(moment, dt.datetime) or moment.tzinfo is None:
        raise ValueError(f"step {step_id!r}: sleep_until needs a timezone-aware datetime, got {until!r}")
    return moment


class Step(_StepCore):
    """Step tools for ``async def`` functions."""

    # An async handler first, so that its step is typed as the awaited value. Coroutine rather than
    # Awaitable: mypy then picks this overload alone even when T holds Any (dict[str, Any]).
    @overload
    async def run(
        self,
        step_id: str,
        handler: Callable[[*Args], Coroutine[Any, Any, T]],
        *args: *Args,
        retries: int | None = None,
        backoff: Backoff | None = None,
        output_type: object = NOT_SET,
    ) -> T: ...

    @overload
    async def run(
        self,
        step_id: str,
        handler: Callable[[*Args], T],
        *args: *Args,
        retries: int | None = None,
        backoff: Backoff | None = None,
        output_type: object = NOT_SET,
    ) -> T: ...

    async def run(
        self,
        step_id: str,
        handler: Callable[[*Args], object],
        *args: *Args,
        retries: int | None = None,
        backoff: Backoff | None = None,
        output_type: object = NOT_SET,
    ) -> Any:
        """Run ``handler(*args)`` once for the run; later re-entries return its stored result.

        The handler may be sync (it runs in a thread, so the worker stays responsive) or async; the
        step is typed as what it returns (an async handler's awaited value). Its result must be
        JSON-compatible, unless ``output_type`` names what the client's serializer converts it from
        (and back to, on re-entries). After the last attempt fails, this raises ``StepError``.
        ``retries`` and ``backoff`` override the function's policy for this step alone.
        """
        replay = self._replay
        if retries is None and backoff is None and output_type is NOT_SET:
            # The common case, spelled out: a replay passes here once per memoized step.
            policy, converter = None, None
            key, index, found, memo = replay.lookup(step_id)
            if found:
                if replay.hooks is not None:
                    await replay.memo_used()
                if type(memo) is dict and len(memo) == 1 and "data" in memo:
                    return memo["data"]
                return unwrap_memo(step_id, memo)
        else:
            policy = StepPolicy.of(step_id, retries, backoff)
            converter = self._converter(step_id, output_type)
            key, index, found, memo = replay.lookup(step_id)
            if found:
                await self._memo_used()
                return self._memo_value(step_id, memo, converter, output_type)
        self._plan_or_run(step_id, key, index)
        await self._new_code()
        try:
            if inspect.iscoroutinefunction(handler):
                result = await handler(*args)
            else:
                result = await asyncio.to_thread(handler, *args)
                if inspect.isawaitable(result):
                    result = await result
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failed(step_id, key, index, exc, policy)
        self._ran(step_id, key, index, result, policy, converter, output_type)

    async def sleep(self, step_id: str, duration: DurationLike) -> None:
        """Pause the run for ``duration``: an int of milliseconds (as in inngest-py), a timedelta, or a
        string like "30s", "5m", "2h", "7d". No worker waits."""
        delta = to_timedelta(duration, what=f"step {step_id!r} sleep duration")
        self._sleep_op(step_id, None, delta)
        await self._memo_used()

    async def sleep_until(self, step_id: str, until: dt.datetime | str) -> None:
        """Pause the run until a timezone-aware datetime (or an ISO 8601 string)."""
        self._sleep_op(step_id, _until(step_id, until), None)
        await self._memo_used()

    async def wait_for_event(
        self, step_id: str, *, event: str, timeout: DurationLike, if_exp: str | None = None
    ) -> Event | None:
        """Pause until an event named ``event`` arrives (and ``if_exp`` holds), or ``timeout`` passes
        (an int of milliseconds, a timedelta, or a string like "1h").

        Returns the event, or None on timeout. ``if_exp`` is CEL over ``event`` (this run's
        triggering event) and ``async`` (the candidate), e.g.
        ``"async.data.request_id == event.data.request_id"``.
        """
        found = self._wait_op(step_id, event, timeout, if_exp)
        await self._memo_used()
        return found

    async def invoke(
        self,
        step_id: str,
        *,
        function: Function[T],
        data: Mapping[str, object] | None = None,
        timeout: DurationLike | None = None,
        v: str | None = None,
    ) -> T:
        """Start ``function`` as a child run and return its output (typed as the function's return);
        its error raises ``StepError``. ``timeout`` (an int of milliseconds, a timedelta, or a string
        like "1h") bounds the wait for it."""
        memo = self._invoke_op(step_id, function, data, timeout, v)
        await self._memo_used()
        return self._invoked(step_id, function, memo)

    async def invoke_by_id(
        self,
        step_id: str,
        *,
        function_id: str,
        app_id: str | None = None,
        data: Mapping[str, object] | None = None,
        timeout: DurationLike | None = None,
        v: str | None = None,
    ) -> object:
        """``invoke`` by id: ``app_id`` defaults to this run's app. Typed ``object``, as in inngest-py:
        the function is not at hand to say what it returns; narrow it (``isinstance``) or use ``invoke``."""
        memo = self._invoke_op(step_id, function_id, data, timeout, v, app_id)
        await self._memo_used()
        return unwrap_memo(step_id, memo)

    async def send_event(self, step_id: str, events: Event | Sequence[Event]) -> list[str]:
        """Send event(s) once for the run (a step): re-entries return the ids without sending again."""
        sender, batch = self._send_batch(step_id, self._sender, events)
        result: list[str] = await self.run(step_id, sender, batch)
        return result


class StepSync(_StepCore):
    """Step tools for plain ``def`` functions; the same semantics, without ``await``."""

    def __init__(
        self,
        replay: Replay,
        sender: Sender | None = None,
        sync_sender: Callable[..., list[str]] | None = None,
        serializer: Serializer | None = None,
    ) -> None:
        super().__init__(replay, sender, serializer)
        self._sync_sender = sync_sender

    def run(
        self,
        step_id: str,
        handler: Callable[[*Args], T],
        *args: *Args,
        retries: int | None = None,
        backoff: Backoff | None = None,
        output_type: object = NOT_SET,
    ) -> T:
        """Run ``handler(*args)`` once for the run; see ``Step.run``."""
        policy = StepPolicy.of(step_id, retries, backoff)
        converter = self._converter(step_id, output_type)
        key, index, found, memo = self._replay.lookup(step_id)
        if found:
            self._memo_used_sync()
            return cast(T, self._memo_value(step_id, memo, converter, output_type))
        self._plan_or_run(step_id, key, index)
        self._new_code_sync()
        try:
            result: object = handler(*args)
            if inspect.isawaitable(result):
                raise TypeError(
                    f"step {step_id!r} returned an awaitable in a plain def function; make the function async"
                )
        except BaseException as exc:
            self._failed(step_id, key, index, exc, policy)
        self._ran(step_id, key, index, result, policy, converter, output_type)

    def sleep(self, step_id: str, duration: DurationLike) -> None:
        """Pause the run for ``duration``; see ``Step.sleep``."""
        self._sleep_op(step_id, None, to_timedelta(duration, what=f"step {step_id!r} sleep duration"))
        self._memo_used_sync()

    def sleep_until(self, step_id: str, until: dt.datetime | str) -> None:
        """Pause the run until a timezone-aware datetime; see ``Step.sleep_until``."""
        self._sleep_op(step_id, _until(step_id, until), None)
        self._memo_used_sync()

    def wait_for_event(
        self, step_id: str, *, event: str, timeout: DurationLike, if_exp: str | None = None
    ) -> Event | None:
        """See ``Step.wait_for_event``."""
        found = self._wait_op(step_id, event, timeout, if_exp)
        self._memo_used_sync()
        return found

    def invoke(
        self,
        step_id: str,
        *,
        function: Function[T],
        data: Mapping[str, object] | None = None,
        timeout: DurationLike | None = None,
        v: str | None = None,
    ) -> T:
        """See ``Step.invoke``."""
        memo = self._invoke_op(step_id, function, data, timeout, v)
        self._memo_used_sync()
        return self._invoked(step_id, function, memo)

    def invoke_by_id(
        self,
        step_id: str,
        *,
        function_id: str,
        app_id: str | None = None,
        data: Mapping[str, object] | None = None,
        timeout: DurationLike | None = None,
        v: str | None = None,
    ) -> object:
        """See ``Step.invoke_by_id``."""
        memo = self._invoke_op(step_id, function_id, data, timeout, v, app_id)
        self._memo_used_sync()
        return unwrap_memo(step_id, memo)

    def send_event(self, step_id: str, events: Event | Sequence[Event]) -> list[str]:
        """See ``Step.send_event``."""
        sender, batch = self._send_batch(step_id, self._sync_sender, events)
        return self.run(step_id, sender, batch)
