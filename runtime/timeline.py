"""A run's timeline (the dashboard's waterfall): every step with its attempts, sleeps, waits, invokes,
parallel groups and the time the run waited on flow control.

``build_timeline`` (pure) assembles it from the run's view (``queries.get_run``) and its history
(``runtime/history.py``, the entries the scripts append as they advance the run); ``get_timeline``
reads both from Redis. ``Timeline.to_dict()`` is the JSON of ``GET /v0/runs/{run_id}/timeline``.

Times are milliseconds since the epoch. A step's items keep the order the run reached them (by their
start), the flow-control wait first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from . import history, keys
from .connection import RedisClient
from .history import HistoryEntry
from .queries import RunView, get_run

#: Item kinds.
STEP, SLEEP, WAIT, INVOKE, FLOW, FUNCTION = "step", "sleep", "wait", "invoke", "flow", "function"
#: Item statuses that mean the item is not over.
OPEN = frozenset({"pending", "running", "retrying", "sleeping", "waiting"})
#: The status a step reported in a fan-out has until it resolves, by its type.
_PENDING_STATUS = {STEP: "pending", SLEEP: "sleeping", WAIT: "waiting", INVOKE: "running"}


@dataclasses.dataclass(slots=True)
class Attempt:
    """One execution of a step's code (or of the function's own, for a ``function`` item).

    ``number``: the step's attempt number (1 for the first; a duplicate execution carries the number
    of the attempt it repeated). ``outcome``: ``"ok"`` (its result was committed), ``"error"`` (it
    failed: retried, or, on the last attempt, the step failed for good), ``"duplicate"`` (it ran
    again although another execution's result was or would be kept: its write was refused, see
    ``refusal``: ``stale``, ``duplicate``, ``fenced`` or ``done``), or ``"state_too_large"`` (its
    value broke the run's state limit and the run failed). ``error``: ``{"name", "message"}`` or None.
    """

    number: int
    started_ms: int | None
    ended_ms: int | None
    outcome: str
    error: dict[str, Any] | None = None
    refusal: str | None = None


@dataclasses.dataclass(slots=True)
class TimelineItem:
    """One bar of the waterfall.

    - ``key``: the step key (hex SHA-1 of its id, ``id:n`` for a repeat); '' for the ``flow`` and
      ``function`` items. ``name``: the step id as the user wrote it.
    - ``kind``: ``"step"``, ``"sleep"``, ``"wait"``, ``"invoke"``, ``"flow"`` (the wait for flow
      control before the run started) or ``"function"`` (the function's own code failed outside any
      step: its attempts).
    - ``start_ms``: a step's first attempt's start (when it was planned, while none ran); a sleep's,
      wait's or invoke's when it was reported. ``end_ms``: when it resolved; None while open.
    - ``status``: ``"completed"``, ``"failed"`` (failed for good; an invoke whose child failed or
      timed out), ``"pending"`` (planned, not run yet), ``"running"`` (an invoke's child runs),
      ``"retrying"`` (its last attempt failed, the next is due at ``detail["retry_at_ms"]``),
      ``"sleeping"``, ``"waiting"``, ``"cancelled"`` (the run was cancelled while it was open).
    - ``attempts``: each execution, in order (see ``Attempt``); empty for sleeps, waits, invokes.
    - ``group``: the steps reported together (a parallel group) share one group id: draw them side
      by side; None for a step reported alone.
    - ``detail``: by kind. sleep: ``wake_at_ms``; wait: ``event``, ``if`` (the condition, or None),
      ``timeout_ms``, then ``matched_event_id`` and ``matched_event`` or ``timed_out: True``; invoke:
      ``function``, ``timeout_ms``, ``child_run_id``, ``timed_out``, ``error`` (the child's);
      step: ``retry_at_ms`` while retrying, ``planned_ms`` for a step of a parallel group; flow:
      ``held`` (why its start was held, e.g. throttled), ``held_until_ms``, ``waited`` (the last
      concurrency limit it waited for), ``waiting_for`` (the one it waits for now) and ``held_ms``
      (all its time waiting for concurrency slots, over the whole run).
    - ``memo_present``: the step's result is memoized (the run's memo holds it).
    """

    key: str
    name: str
    kind: str
    start_ms: int | None
    end_ms: int | None = None
    status: str = "pending"
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    group: str | None = None
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)
    memo_present: bool = False


@dataclasses.dataclass(slots=True)
class FailedAt:
    """Where a failed run's error was raised: the step that failed for good and let its error escape,
    or whose code raised a ``NonRetriableError`` (``key``, ``name``, the ``attempt`` that raised it),
    or, with ``key`` None, the function's own code
    (``attempt``: its last invocation's number, when known). ``error``: the run's error."""

    key: str | None
    name: str | None
    attempt: int | None
    error: Any


@dataclasses.dataclass(slots=True)
class Timeline:
    """A run (``RunView``, as ``GET /v0/runs/{id}`` shows it), its timeline ``items`` in order, and
    ``failed_at`` for a failed run. ``truncated``: the run's history reached its bound
    (``history.HISTORY_MAX`` entries) and its oldest entries were dropped."""

    run: RunView
    items: list[TimelineItem]
    failed_at: FailedAt | None = None
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"run": RunView.to_dict(), "items": [...], "failed_at": ..., "truncated"}``."""
        return {
            "run": self.run.to_dict(),
            "items": [dataclasses.asdict(item) for item in self.items],
            "failed_at": dataclasses.asdict(self.failed_at) if self.failed_at else None,
            "truncated": self.truncated,
        }


async def get_timeline(redis: RedisClient, run_id: str) -> Timeline | None:
    """The timeline of run ``run_id``, or None when it is unknown or expired."""
    view = await get_run(redis, run_id)
    if view is None:
        return None
    raw: list[bytes] = await redis.lrange(keys.history(run_id), 0, -1)  # type: ignore[misc]
    entries = [e for e in (history.decode(r) for r in raw) if e is not None]
    return build_timeline(view, entries)


def build_timeline(run: RunView, entries: Sequence[HistoryEntry]) -> Timeline:
    """Assemble a run's timeline from its view and its history entries (oldest first). Steps the
    history does not know (its oldest entries trimmed, or steps a resumed run kept) come from the
    run's steps hash, with their last attempt."""
    build = _Builder()
    for entry in entries:
        build.add(entry)
    items = list(build.items.values())
    for step in run.steps:
        if step.key in build.items:
            continue
        end = step.finished_ms
        start = end - step.duration_ms if end is not None and step.duration_ms is not None else end
        status = ("failed" if step.error and _failed_memo(step.memo) else "completed") if step.done else "pending"
        item = TimelineItem(step.key, step.name, STEP, start, end if step.done else None, status)
        if step.done and step.executions:
            # a step's code that ran: its last attempt, as the steps hash keeps it (``stepq run``
            # shows the same); a step a resumed run kept ran in the run it was forked from
            outcome = "error" if status == "failed" else "ok"
            item.attempts.append(Attempt(max(1, step.attempts), start, end, outcome))
        if step.done and run.forked_from:
            item.detail["kept_from"] = run.forked_from
        items.append(item)
    done = {step.key for step in run.steps if step.done}
    for item in items:
        item.memo_present = item.key in done
        started = [a.started_ms for a in item.attempts if a.started_ms is not None]
        if started and item.kind in (STEP, FUNCTION):
            if item.group is not None:
                item.detail.setdefault("planned_ms", item.start_ms)
            item.start_ms = min(started)
        if item.status in OPEN and run.status == "cancelled":
            item.status = "cancelled"
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda i: (i.start_ms if i.start_ms is not None else 2**63, order[id(i)]))
    flow = _flow_item(run)
    return Timeline(
        run,
        [flow, *items] if flow else items,
        _failed_at(run, items, build.finished),
        truncated=len(entries) >= history.HISTORY_MAX,
    )


class _Builder:
    """Folds history entries into items, by step key (in the order the run reached them)."""

    def __init__(self) -> None:
        self.items: dict[str, TimelineItem] = {}
        #: The run's end, as its last invocation recorded it.
        self.finished: HistoryEntry | None = None

    def item(self, key: str, name: str | None, kind: str, start_ms: int | None) -> TimelineItem:
        found = self.items.get(key)
        if found is None:
            found = self.items[key] = TimelineItem(key, name or key, kind, start_ms)
        elif name and found.name == key:
            found.name = name
        return found

    def add(self, entry: HistoryEntry) -> None:
        f, at, applied = entry.fields, entry.at_ms, entry.outcome in history.APPLIED
        key, name = str(f.get("key", "")), f.get("name") or None
        kind = entry.kind
        if kind in (history.K_COMMIT, history.K_RESOLVE):
            item = self.item(key, name, STEP, f.get("started_ms"))
            item.attempts.append(_attempt(entry, "error" if f.get("error") else "ok"))
            if applied:
                item.end_ms, item.status = at, "failed" if f.get("error") else "completed"
                item.detail.pop("retry_at_ms", None)
        elif kind == history.K_RETRY:
            item = self.item(key, name, STEP, f.get("started_ms")) if key else self.item("", "", FUNCTION, None)
            item.attempts.append(_attempt(entry, "error"))
            if applied:
                item.status, item.detail["retry_at_ms"] = "retrying", f.get("retry_at_ms")
        elif kind == history.K_SLEEP and applied:
            item = self.item(key, name, SLEEP, at)
            item.status, item.detail["wake_at_ms"] = "sleeping", f.get("wake_at_ms")
        elif kind == history.K_FAN_OUT and applied:
            steps = [s for s in f.get("steps") or () if isinstance(s, dict)]
            group = str(f.get("group")) if len(steps) > 1 else None
            for step in steps:
                self._pending(step, group, at)
        elif kind == history.K_FINISH:
            if key:
                # a step's code raised the error that failed the run at once (a NonRetriableError)
                item = self.item(key, name, STEP, f.get("started_ms"))
                item.attempts.append(_attempt(entry, "error"))
                if applied:
                    item.end_ms, item.status = at, "failed"
                    item.detail.pop("retry_at_ms", None)
            if applied:
                self.finished = entry
        elif kind == history.K_INVOKE:
            self._resolved(self.item(key, name, INVOKE, at), entry)
        elif applied and key in self.items:
            self._resolved(self.items[key], entry)

    def _pending(self, step: dict[str, Any], group: str | None, at: int) -> None:
        """A step of a fan-out: pending until its job, event, timer or child resolves it."""
        typ = str(step.get("type") or STEP)
        item = self.item(str(step.get("key", "")), step.get("name"), typ, at)
        item.kind, item.group, item.status = typ, group, _PENDING_STATUS.get(typ, "pending")
        item.start_ms = item.start_ms if item.start_ms is not None else at
        item.detail.update({k: v for k, v in step.items() if k not in ("key", "name", "type")})

    def _resolved(self, item: TimelineItem, entry: HistoryEntry) -> None:
        """A pending item resolved by something other than its own code (or an invoke's child started)."""
        f, at, kind = entry.fields, entry.at_ms, entry.kind
        if kind == history.K_INVOKE:
            item.detail.setdefault("child_run_id", f.get("child_run_id"))
            item.detail.setdefault("function", f.get("function"))
            return
        item.end_ms = at
        if kind == history.K_WOKE:
            item.status = "completed"
        elif kind == history.K_TIMER:
            # a sleep in a fan-out ended; a wait or invoke timed out (an invoke's timeout fails it)
            if item.kind in (WAIT, INVOKE):
                item.detail["timed_out"] = True
            item.status = "failed" if item.kind == INVOKE else "completed"
        elif kind == history.K_EVENT:
            item.detail["matched_event_id"], item.detail["matched_event"] = f.get("event_id"), f.get("event")
            item.status = "completed"
        elif kind == history.K_CHILD:
            item.detail["child_run_id"] = f.get("child_run_id")
            if f.get("error"):
                item.detail["error"] = f["error"]
            item.status = "failed" if f.get("error") else "completed"
        elif kind == history.K_NO_FUNCTION:
            item.detail["error"] = {"name": "FunctionNotFound", "message": f"no function {f.get('function')!r}"}
            item.status = "failed"


def _attempt(entry: HistoryEntry, outcome: str) -> Attempt:
    """An execution recorded by ``entry``, whose write, when applied, means ``outcome``."""
    f = entry.fields
    number = int(f.get("attempt") or 1)
    if entry.outcome in history.APPLIED:
        return Attempt(number, f.get("started_ms"), entry.at_ms, outcome, f.get("error"))
    if entry.outcome in history.REFUSED:
        return Attempt(number, f.get("started_ms"), entry.at_ms, "duplicate", f.get("error"), entry.outcome)
    return Attempt(number, f.get("started_ms"), entry.at_ms, entry.outcome, f.get("error"), entry.outcome)


def _flow_item(run: RunView) -> TimelineItem | None:
    """The wait for flow control before the run's first step (a throttle's hold, concurrency slots)."""
    if not (run.held or run.waited or run.waiting_for or run.held_ms):
        return None
    detail = {
        "held": run.held,
        "held_until_ms": run.held_until_ms,
        "waited": run.waited,
        "waiting_for": run.waiting_for,
        "held_ms": run.held_ms,
    }
    status = "completed" if run.started_ms is not None else "waiting"
    name = run.held or run.waiting_for or run.waited or "flow control"
    return TimelineItem("", name, FLOW, run.created_ms, run.started_ms, status, detail=detail)


def _failed_at(run: RunView, items: Sequence[TimelineItem], finished: HistoryEntry | None) -> FailedAt | None:
    """Where a failed run's error came from: the step the run's end names (its code raised a
    NonRetriableError), the last step that failed for good with that very error (an uncaught
    StepError carries the step's error), else the function's own code."""
    if run.status != "failed":
        return None
    if finished is not None and finished.fields.get("key"):
        # the run's end names the step whose code raised its error (a NonRetriableError)
        f = finished.fields
        return FailedAt(str(f["key"]), f.get("name") or None, int(f.get("attempt") or 1), run.error)
    error = run.error if isinstance(run.error, dict) else {}
    same = (error.get("name"), str(error.get("message", ""))[: history.MAX_ERROR_CHARS])
    for item in sorted(items, key=lambda i: i.end_ms or 0, reverse=True):
        if item.status != "failed" or item.kind != STEP:
            continue
        raised = next((a for a in reversed(item.attempts) if a.error and a.outcome == "error"), None)
        if (
            raised is not None
            and raised.error is not None
            and (raised.error.get("name"), raised.error.get("message")) == same
        ):
            return FailedAt(item.key, item.name, raised.number, run.error)
    attempt = finished.fields.get("attempt") if finished is not None else None
    return FailedAt(None, None, int(attempt) if attempt else None, run.error)


def _failed_memo(memo: Any) -> bool:
    return isinstance(memo, dict) and "error" in memo and "data" not in memo
