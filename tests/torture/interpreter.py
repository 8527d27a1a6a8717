"""The interpreter: one stepq function that runs any program (see ``program``) with real step tools.

``define(client, prefix)`` adds two functions to an app: ``torture`` (triggered by
``<prefix>/run``, cancelled by ``<prefix>/cancel`` with the same ``data.pid``) and ``torture-child``
(``<prefix>/child``, what ``invoke`` ops call). Both walk the program in the event's data and
return ``{"acc", "trace", "digest"}``.

Every execution of a step handler is recorded before it returns, as ``name|attempt|token|os pid`` in
the Redis list ``torture:x:<pid>`` (outside stepq's ``stepq:`` keys, in the database of
``STEPQ_REDIS_URL``, or of ``STEPQ_TORTURE_RECORDS_URL`` when set), and the handler returns its
token, so the test can count each step's executions and check that the committed result came from
one of them. A handler fails while ``ctx.attempt`` is below the op's ``fail``: the step's attempt
counter, not the number of executions, decides, so a duplicate execution after a worker's death
changes nothing in the outcome.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import RedisError

import stepq
from stepq.function import Cancel, Function
from tests.torture.program import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    CANCEL_HOLD_MS,
    CANCEL_STEP_MS,
    FUNCTION_RETRIES,
    NEVER,
    RETRY_AFTER_S,
    SEND_CODE,
    SIGNAL,
    SLEEP_CODE,
    WAIT_TIMEOUT_CODE,
    Op,
    body_path,
    branch_path,
    mix,
    name_code,
    seed_of,
    signal_value,
    step_id,
    token_digest,
    value,
)

#: At most this many of ``torture``'s steps execute at once (and 2 per program: its parallel branches
#: take turns).
CONCURRENCY = 16
#: How long a handler keeps trying to record its execution while Redis is away (a restart).
RECORD_PATIENCE_S = 120.0
#: Side keys outlive any test run, then go.
SIDE_TTL_S = 6 * 3600
BACKOFF = stepq.Backoff.of(dt.timedelta(seconds=BACKOFF_INITIAL_S), maximum=dt.timedelta(seconds=BACKOFF_MAX_S))


class TortureError(Exception):
    """What a failing step (or a flaky function body) raises."""


def executions_key(pid: str) -> str:
    """The list of a program's step executions: ``name|attempt|token|os pid`` entries."""
    return f"torture:x:{pid}"


#: Appends an execution record and keeps the list's TTL, in one call.
_APPEND = "redis.call('rpush', KEYS[1], ARGV[1]) redis.call('expire', KEYS[1], ARGV[2])"
#: The record clients' limits: a Redis that stops answering fails a record (which is retried), it
#: never hangs a step.
_TIMEOUTS: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 2}
#: The Redis the records go to, when not stepq's own (a torture run on a cluster: tests/torture/
#: cluster.py's ``records_url``).
RECORDS_URL_ENV = "STEPQ_TORTURE_RECORDS_URL"


class Recorder:
    """This process's connections for execution records (sync handlers run in threads), to one Redis:
    ``RECORDS_URL_ENV``'s, else stepq's own (``STEPQ_REDIS_URL``)."""

    def __init__(self) -> None:
        self._sync: redis.Redis | None = None
        self._async: redis.asyncio.Redis | None = None

    def _url(self) -> str:
        return os.environ.get(RECORDS_URL_ENV) or os.environ["STEPQ_REDIS_URL"]

    def record_sync(self, pid: str, entry: str) -> None:
        deadline = time.monotonic() + RECORD_PATIENCE_S
        while True:
            try:
                if self._sync is None:
                    self._sync = redis.Redis.from_url(self._url(), **_TIMEOUTS)
                self._sync.eval(_APPEND, 1, executions_key(pid), entry, str(SIDE_TTL_S))
                return
            except (RedisError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    async def record(self, pid: str, entry: str) -> None:
        deadline = time.monotonic() + RECORD_PATIENCE_S
        while True:
            try:
                if self._async is None:
                    self._async = redis.asyncio.Redis.from_url(self._url(), **_TIMEOUTS)
                await self._async.eval(_APPEND, 1, executions_key(pid), entry, str(SIDE_TTL_S))  # type: ignore[misc]
                return
            except (RedisError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


RECORDER = Recorder()


def _error(kind: str, message: str) -> Exception:
    if kind == "after":
        return stepq.RetryAfterError(message, dt.timedelta(seconds=RETRY_AFTER_S))
    if kind == "nonret":
        return stepq.NonRetriableError(message)
    return TortureError(message)


class Interpreter:
    """Walks one program inside one invocation of the function."""

    #: Scales every handler's work and the slow step of a cancel (the engine-only check sets 0).
    time_scale = 1.0

    def __init__(self, ctx: stepq.Context, child: Function) -> None:
        self.ctx = ctx
        self.child = child
        data = ctx.event.data
        self.pid: str = data["pid"]
        self.program: list[Op] = data["ops"]
        self.trace: list[str] = []
        self.tokens: list[str] = []
        self._seen: Counter[str] = Counter()

    async def run(self) -> dict[str, Any]:
        acc = await self.ops(self.program, "", seed_of(self.pid))
        last = self.program[-1] if self.program else None
        if last is not None and last["op"] == "raise":
            if last["kind"] == "nonret":
                raise stepq.NonRetriableError(f"{self.pid}: the program ends with a NonRetriableError")
            if self.ctx.attempt < last["n"]:
                raise TortureError(f"{self.pid}: the function body fails on attempt {self.ctx.attempt}")
        return {"acc": acc, "trace": self.trace, "digest": token_digest(self.tokens)}

    def _name(self, sid: str) -> str:
        """The step's key name, as the engine counts repeats of an id."""
        n = self._seen[sid]
        self._seen[sid] += 1
        return sid if n == 0 else f"{sid}:{n}"

    async def ops(self, ops: list[Op], path: str, acc: int) -> int:
        for i, op in enumerate(ops):
            acc = await self.op(op, f"{path}{i}", acc)
        return acc

    async def op(self, op: Op, path: str, acc: int) -> int:
        kind = op["op"]
        step = self.ctx.step
        if kind == "run":
            return await self._run(step_id("r", path), op, acc, path)
        if kind == "loop":
            for _ in range(op["n"]):
                acc = await self._run(step_id("l", path), op, acc, path)
            return acc
        if kind == "sleep":
            sid = step_id("s", path)
            self._name(sid)
            await step.sleep(sid, dt.timedelta(milliseconds=op["ms"]))
            self.trace.append(f"s{path}")
            return mix(acc, SLEEP_CODE)
        if kind == "wait":
            sid = step_id("w", path)
            self._name(sid)
            got = await step.wait_for_event(
                sid,
                event=SIGNAL,
                timeout=dt.timedelta(milliseconds=op["ms"]),
                if_exp=f'async.data.tok == "{op["tok"]}"',
            )
            if got is not None:
                if got.data.get("tok") != op["tok"] or got.data.get("v") != signal_value(op["tok"]):
                    raise stepq.NonRetriableError(f"wait {sid} of {self.pid} got a foreign event: {got.data}")
                self.trace.append(f"w{path}:m")
                return mix(acc, signal_value(op["tok"]))
            self.trace.append(f"w{path}:t")
            return mix(acc, WAIT_TIMEOUT_CODE)
        if kind == "send":
            sid = step_id("e", path)
            self._name(sid)
            ids = await step.send_event(sid, stepq.Event(name=SIGNAL, data={"tok": op["tok"], "v": op["v"]}))
            if len(ids) != 1:
                raise stepq.NonRetriableError(f"send {sid} of {self.pid} returned {ids}")
            self.trace.append(f"e{path}")
            return mix(acc, SEND_CODE)
        if kind == "invoke":
            sid = step_id("i", path)
            name = self._name(sid)
            out = await step.invoke(sid, function=self.child, data={"pid": f"{self.pid}/{name}", "ops": op["child"]})
            self.trace.append(f"i{path}")
            return mix(acc, int(out["acc"]))
        if kind == "par":
            branches: list[list[Op]] = op["branches"]

            def branch(b: int) -> Callable[[], Awaitable[int]]:
                return lambda: self.ops(branches[b], branch_path(path, b), mix(acc, 1000 + b))

            results = await self.ctx.group.parallel(tuple(branch(b) for b in range(len(branches))))
            for r in results:
                acc = mix(acc, r)
            self.trace.append(f"P{path}")
            return acc
        if kind == "try":
            try:
                return await self.ops(op["body"], body_path(path), acc)
            except stepq.StepError as exc:
                self.trace.append(f"c{path}:{exc.name}")
                return mix(acc, name_code(exc.name))
        if kind == "cancel":
            await self._hold(op, step_id("k", path), acc)
            self.trace.append(f"k{path}")
            return mix(acc, 1)
        if kind == "raise":
            return acc  # see run(): it only ever comes last
        raise stepq.NonRetriableError(f"unknown op {kind!r} in {self.pid}")

    async def _hold(self, op: Op, sid: str, acc: int) -> None:
        """Where the driver cancels the run: a wait nobody satisfies, a long sleep, or a slow step."""
        name = self._name(sid)
        step = self.ctx.step
        hold = dt.timedelta(milliseconds=CANCEL_HOLD_MS)
        if op["at"] == "wait":
            await step.wait_for_event(sid, event=NEVER, timeout=hold, if_exp=f'async.data.tok == "{self.pid}"')
        elif op["at"] == "sleep":
            await step.sleep(sid, hold)
        else:
            slow = {"op": "run", "mode": "async", "ms": CANCEL_STEP_MS, "fail": 0}
            await step.run(sid, self._handler(name, slow, acc))

    async def _run(self, sid: str, op: Op, acc: int, path: str) -> int:
        name = self._name(sid)
        result = await self.ctx.step.run(
            sid, self._handler(name, op, acc), retries=op.get("retries", 2), backoff=BACKOFF
        )
        if result.get("v") != value(self.pid, name, acc):
            raise stepq.NonRetriableError(f"step {name} of {self.pid} returned {result}: not its value")
        self.tokens.append(str(result["x"]))
        self.trace.append(f"r{path}")
        return mix(acc, int(result["v"]))

    def _handler(self, name: str, op: Op, acc: int) -> Callable[[], Any]:
        """The step's handler: record the execution, work ``ms``, fail while the attempt is below ``fail``."""
        pid, attempt = self.pid, self.ctx.attempt
        fail, err, seconds = op.get("fail", 0), op.get("err", "plain"), op.get("ms", 0) / 1000 * self.time_scale
        result = value(pid, name, acc)

        big = int(op.get("big", 0))

        def outcome(token: str) -> dict[str, Any]:
            if attempt < fail:
                raise _error(err, f"{pid} step {name} fails on attempt {attempt}")
            if big:
                return {"v": result, "x": token, "a": attempt, "pad": "x" * big}
            return {"v": result, "x": token, "a": attempt}

        if op.get("mode") == "sync":

            def run_sync() -> dict[str, Any]:
                token = uuid.uuid4().hex[:12]
                RECORDER.record_sync(pid, f"{name}|{attempt}|{token}|{os.getpid()}")
                if seconds:
                    time.sleep(seconds)
                return outcome(token)

            return run_sync

        async def run_async() -> dict[str, Any]:
            token = uuid.uuid4().hex[:12]
            await RECORDER.record(pid, f"{name}|{attempt}|{token}|{os.getpid()}")
            if seconds:
                await asyncio.sleep(seconds)
            return outcome(token)

        return run_async


def define(client: stepq.Client, prefix: str) -> tuple[Function, Function]:
    """Add ``torture`` and ``torture-child`` to ``client``'s app; their events are ``<prefix>/...``."""
    children: list[Function] = []

    async def interpret(ctx: stepq.Context) -> dict[str, Any]:
        return await Interpreter(ctx, children[0]).run()

    main = client.create_function(
        id="torture",
        trigger=stepq.TriggerEvent(event=f"{prefix}/run"),
        retries=FUNCTION_RETRIES,
        backoff=BACKOFF,
        cancel=[Cancel(event=f"{prefix}/cancel", if_exp="async.data.pid == event.data.pid")],
        # every fault meets concurrency slots too: a slot must never leak, whatever kills, pauses,
        # cancels or restarts hit its holder (global_leftovers checks that none is left)
        concurrency=[stepq.Concurrency(limit=CONCURRENCY), stepq.Concurrency(limit=2, key="event.data.pid")],
    )(interpret)
    child = client.create_function(
        id="torture-child",
        trigger=stepq.TriggerEvent(event=f"{prefix}/child"),
        retries=FUNCTION_RETRIES,
        backoff=BACKOFF,
    )(interpret)
    children.append(child)
    return main, child
