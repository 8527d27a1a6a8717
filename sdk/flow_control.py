"""Inngest's flow-control options, as types: ``Concurrency``, ``Throttle``, ``RateLimit``, ``Debounce``,
``Batch``, ``Priority`` and ``Singleton``.

They carry inngest-py 0.5's fields so that code written for Inngest constructs them unchanged, plus
stepq's ``RunConcurrency``. ``create_function`` validates them (``stepq.flow_spec``: a bad one gets
an error naming its field) and the runtime enforces them: concurrency and priority when steps are
claimed (``stepq.runtime.concurrency``), throttle, rate limit, idempotency and singleton when a run
is created (``stepq.runtime.flow_starts``), debounce and batching as events arrive
(``stepq.runtime.gather``). Their durations (``period``, ``timeout``) are an int of milliseconds or
a timedelta, as in inngest-py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Literal


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """Start one run per batch of up to ``max_size`` events, gathered for at most ``timeout``."""

    max_size: int
    timeout: int | dt.timedelta | None = None
    key: str | None = None
    if_exp: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Concurrency:
    """At most ``limit`` steps running at once, per ``key`` (a CEL expression) within ``scope``."""

    limit: int
    key: str | None = None
    scope: Literal["account", "env", "fn"] | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunConcurrency:
    """stepq's run-level limit: at most ``limit`` *runs* active at once per ``key`` within ``scope``.

    A run takes its slot when its first step starts and holds it until it ends, through its sleeps
    and waits (``Concurrency`` counts executing steps, as Inngest does). Pass it in
    ``create_function``'s ``concurrency`` list beside ``Concurrency`` limits (at most two of each);
    it registers in the ``{"fn": [...], "step": [...]}`` form of Inngest's run-level limits."""

    limit: int
    key: str | None = None
    scope: Literal["account", "env", "fn"] | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Debounce:
    """Start a run only once no event (per ``key``) arrived for ``period``; at most ``timeout`` late."""

    period: int | dt.timedelta
    key: str | None = None
    timeout: int | dt.timedelta | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Priority:
    """``run`` is a CEL expression giving a run's priority (seconds to move it ahead in the queue)."""

    run: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """Start at most ``limit`` runs per ``period`` (per ``key``); events over the limit start none."""

    limit: int
    period: int | dt.timedelta
    key: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Singleton:
    """At most one active run per ``key``: a new one is skipped, or cancels the old (``mode``)."""

    mode: Literal["skip", "cancel"]
    key: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Throttle:
    """Start at most ``limit`` runs per ``period`` (per ``key``, with ``burst``); the rest wait their turn."""

    limit: int
    period: int | dt.timedelta
    key: str | None = None
    burst: int | None = 1
