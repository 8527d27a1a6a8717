"""One invocation's request and the bookkeeping of replaying it: which memoized steps were reached,
how repeated step ids get their keys, and the signals (``Interrupt``, ``Skip``, ``Diverged``) that
stop user code at a new step.

A leaf of the engine: ``stepq.step`` (the step tools), ``stepq.context`` (``ctx``) and
``stepq.engine`` (``execute``) all build on it, and it imports none of them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import msgpack

from .errors import NonDeterminismError, OutputTooLarge, StepError, StepOutputError
from .event import Event
from .jsonvalue import JSON, NotJSONError, check_json
from .opcodes import Opcode, _hash_cache, hash_step_id

DEFAULT_MAX_OUTPUT_BYTES = 4 * 1024 * 1024


@dataclasses.dataclass(slots=True)
class ExecutionRequest:
    """Everything one invocation needs. ``steps`` maps step keys to memo values (wire shapes)."""

    event: Event
    events: Sequence[Event]
    steps: Mapping[str, Any]
    run_id: str
    attempt: int = 0
    #: Step keys in the order they completed; ``steps`` holds exactly these.
    stack: Sequence[str] = ()
    #: The user-facing ids of memoized steps, keyed by step key, for clearer errors.
    step_names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: Run only this planned step (its key); other new steps are skipped.
    target_step: str | None = None
    #: Report every new step as planned instead of running it in this invocation.
    disable_immediate_execution: bool = False
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES


@dataclasses.dataclass(slots=True)
class Divergence:
    """A re-entry that left the run's history: a memoized step was not reached, new steps were."""

    expected_key: str
    position: int  # 1-based, in the run's history
    total: int
    unused: int
    asked: list[str]

    def describe(self, names: Mapping[str, str]) -> str:
        name = names.get(self.expected_key, self.expected_key)
        return (
            f"step {name!r} (position {self.position} of {self.total} in the run's history) was not "
            f"reached on re-entry; {self.unused} memoized step(s) went unused"
        )

    def message(self, fn_id: str, run_id: str, names: Mapping[str, str]) -> str:
        """The NonDeterminismError's message, naming steps by the ids users wrote (``names``)."""
        asked = ", ".join(repr(step_id) for step_id in self.asked) or "no step"
        return (
            f"run {run_id} of function {fn_id!r} diverged from its history: it now asks for new "
            f"step {asked}, but {self.describe(names)}. Step ids must be the same on every re-entry: "
            f"build them from the event or from step results, never from random numbers, the clock or "
            f"unordered data; a function whose code changed mid-run may also cause this."
        )


@dataclasses.dataclass(frozen=True, slots=True)
class FailedStep:
    """The step whose code raised the ``NonRetriableError`` that failed the invocation: its ``key``
    and ``name`` (the step id as written). The error fails the run at once, as from the function's
    own code, but the runtime records it against this step (its attempt, its error)."""

    key: str
    name: str


class InvocationHooks(Protocol):
    """What the engine tells middleware while user code runs (see ``stepq.invocation``). The hooks
    see and may change the function's input; they never change what the engine decides."""

    async def started(self, ctx: Any) -> None:
        """Before the function is called, with its context."""

    async def new_code(self) -> None:
        """Code that has not run before is about to run (called once per invocation)."""

    def new_code_sync(self) -> None:
        """``new_code`` from a plain ``def`` function's thread."""

    async def stopped(self) -> None:
        """The function returned, or stopped at new steps."""


class HookFailed(BaseException):
    """A middleware hook raised while user code was running: a BaseException so that user code's
    ``except Exception`` cannot swallow it; the invocation fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class Interrupt(BaseException):
    """Stops user code at new steps. A BaseException so that ``except Exception`` lets it through."""

    def __init__(self, opcodes: list[Opcode], retry_after: dt.timedelta | None = None) -> None:
        super().__init__(f"{len(opcodes)} step opcode(s)")
        self.opcodes = opcodes
        self.retry_after = retry_after


class Skip(BaseException):
    """A parallel branch reached a new step that is not the targeted one: this branch ends here."""


class Diverged(BaseException):
    """Sequential code reached a new step while memoized steps were left unvisited: the function
    left its history, so the new step must not run (its side effects would be wrong)."""

    def __init__(self, step_id: str) -> None:
        super().__init__(step_id)
        self.step_id = step_id


class Replay:
    """The bookkeeping of one invocation: which memo entries were used, how step ids repeat."""

    def __init__(self, request: ExecutionRequest, max_attempts: int, app_id: str = "") -> None:
        self.request = request
        self.max_attempts = max_attempts
        self.app_id = app_id
        #: Per step id: the index its next repeat gets (1 after the first occurrence).
        self._seen: dict[str, int] = {}
        #: Step ids users wrote with a colon (``x:1``): repeats of ``x`` skip these indexes.
        self._colon_ids: set[str] = set()
        #: Keys of the memoized steps reached, for divergence reports.
        self._hits: list[str] = []
        self.visited = 0
        self.parallel_depth = 0
        #: Middleware's hooks (None without middleware): the step tools call ``memo_used``/``new_code``.
        self.hooks: InvocationHooks | None = None
        self._new_code_told = False
        #: The NonRetriableErrors steps' code raised, with their steps (the engine names the step
        #: when that very exception escapes the function).
        self._raised: list[tuple[BaseException, FailedStep]] = []

    @property
    def replaying(self) -> bool:
        """True while memoized steps remain to be visited: code outside steps has run before."""
        return self.visited < len(self.request.steps)

    def lookup(self, step_id: str) -> tuple[str, int | None, bool, Any]:
        """(key, index, memoized, memo) for this occurrence of ``step_id``.

        The hot path of every replay (about a microsecond a step), so it is one method. Keys follow
        Inngest: ``id``, then ``id:1``, ``id:2``... As in Inngest's JS SDK, an index a user already
        took by name (a step literally called ``id:1``) is skipped, so two steps never share a key.
        """
        seen = self._seen
        following = seen.get(step_id)
        if following is None and (type(step_id) is not str or not step_id):
            raise ValueError(f"step id must be a non-empty string, got {step_id!r}")
        if following is None and not (":" in step_id and self._generated(step_id)):
            seen[step_id] = 1
            if ":" in step_id:
                self._colon_ids.add(step_id)
            key = _hash_cache.get(step_id) or hash_step_id(step_id)
            index = None
        else:
            index = following or 1
            if self._colon_ids:
                while f"{step_id}:{index}" in self._colon_ids:
                    index += 1
            seen[step_id] = index + 1
            key = _indexed_cache.get((step_id, index)) or _indexed_key(step_id, index)
        steps = self.request.steps
        if key in steps:
            self.visited += 1
            self._hits.append(key)
            return key, index, True, steps[key]
        return key, index, False, None

    def raised_in_step(self, exc: BaseException, key: str, step_id: str) -> None:
        """Step ``step_id`` (``key``)'s code raised ``exc``, which fails the run at once."""
        self._raised.append((exc, FailedStep(key, step_id)))

    def step_that_raised(self, exc: BaseException) -> FailedStep | None:
        """The step whose code raised ``exc`` itself (not a copy, nor an error wrapping it), or None."""
        return next((step for raised, step in self._raised if raised is exc), None)

    async def memo_used(self) -> None:
        """After a memo hit: once the last memoized step was replayed, new code follows."""
        if self.visited >= len(self.request.steps):
            await self.new_code()

    def memo_used_sync(self) -> None:
        """``memo_used`` from a plain ``def`` function's thread."""
        if self.visited >= len(self.request.steps):
            self.new_code_sync()

    async def new_code(self) -> None:
        """Tell the hooks, once per invocation, that code not run before is about to run."""
        if self.hooks is not None and not self._new_code_told:
            self._new_code_told = True
            try:
                await self.hooks.new_code()
            except Exception as exc:
                raise HookFailed(exc) from exc

    def new_code_sync(self) -> None:
        """``new_code`` from a plain ``def`` function's thread."""
        if self.hooks is not None and not self._new_code_told:
            self._new_code_told = True
            try:
                self.hooks.new_code_sync()
            except Exception as exc:
                raise HookFailed(exc) from exc

    def _generated(self, step_id: str) -> bool:
        """Whether ``step_id`` (``base:n``) is a key name this invocation already gave a repeat."""
        base, _, number = step_id.rpartition(":")
        return number.isascii() and number.isdigit() and 1 <= int(number) < self._seen.get(base, 0)

    def may_run_now(self, key: str, step_id: str = "") -> bool:
        """Whether a new step may run in this invocation; raises Skip/Diverged/NonDeterminismError
        when it must not be reached at all."""
        target = self.request.target_step
        if target is not None:
            if key == target:
                return True
            if self.parallel_depth:
                raise Skip()
            raise NonDeterminismError(
                f"planned step {target} was not reached: the function asked for another new step first"
            )
        if not self.parallel_depth and self.visited < len(self.request.steps):
            raise Diverged(step_id)
        return not (self.parallel_depth or self.request.disable_immediate_execution)

    def check_output(self, step_id: str, value: Any) -> JSON:
        """The value as stored, or a StepOutputError naming the step and the problem."""
        return check_output(value, self.request.max_output_bytes, f"step {step_id!r} returned")

    def divergence(self, asked: list[str]) -> Divergence | None:
        """The memoized steps the function did not reach, or None when it followed its history."""
        if self.visited >= len(self.request.steps):
            return None
        visited = set(self._hits)
        stack = list(self.request.stack)
        missing = [k for k in stack if k not in visited]
        if not missing:
            return None
        return Divergence(missing[0], stack.index(missing[0]) + 1, len(stack), len(missing), asked)


_indexed_cache: dict[tuple[str, int], str] = {}


def _indexed_key(step_id: str, index: int) -> str:
    """The key of the ``index``-th repeat of ``step_id``; cached, since replays ask again."""
    key = hash_step_id(f"{step_id}:{index}")
    if len(_indexed_cache) < 100_000:
        _indexed_cache[(step_id, index)] = key
    return key


def check_output(value: Any, max_bytes: int, what: str) -> JSON:
    """``value`` as stored (tuples as lists), or a StepOutputError saying why it cannot be stored:
    not JSON-compatible, nested too deeply, or over ``max_bytes`` once encoded. ``what`` begins the
    message: ``"step 'charge' returned"``."""
    try:
        checked = check_json(value, "output")
    except NotJSONError as exc:
        raise StepOutputError(f"{what} a value that cannot be stored: {exc.path}: {exc.reason}") from None
    except RecursionError:
        raise StepOutputError(f"{what} a value nested too deeply to store") from None
    try:
        size = len(msgpack.packb(checked))
    except ValueError:  # msgpack's own nesting limit (511 levels)
        raise StepOutputError(f"{what} a value nested too deeply to store") from None
    if size > max_bytes:
        raise OutputTooLarge(
            f"{what} {size} bytes, over the limit of {max_bytes} bytes per output (STEPQ_MAX_OUTPUT_BYTES)"
        )
    return checked


def unwrap_memo(step_id: str, memo: Any) -> Any:
    """The value a memoized step returns to user code (or the StepError it raises)."""
    if type(memo) is dict and len(memo) == 1:
        if "data" in memo:
            return memo["data"]
        if "error" in memo:
            err = memo["error"] if isinstance(memo["error"], dict) else {"message": str(memo["error"])}
            raise StepError(
                str(err.get("name") or "Error"),
                str(err.get("message") or ""),
                err.get("stack"),
                step_id=step_id,
            )
    return memo
