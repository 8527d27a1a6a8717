"""How long to wait before the next attempt of a failed step."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
from typing import Any

from .durations import DurationLike, to_timedelta
from .errors import FunctionConfigError


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: ``initial * factor**(attempt-1)``, capped at ``maximum``.

    ``jitter`` is the fraction of the delay drawn at random (0.2 spreads a 10 s delay over 8-10 s), so
    that steps failing together do not retry together.
    """

    initial: dt.timedelta = dt.timedelta(seconds=1)
    factor: float = 2.0
    maximum: dt.timedelta = dt.timedelta(minutes=10)
    jitter: float = 0.2

    @classmethod
    def of(
        cls,
        initial: DurationLike = dt.timedelta(seconds=1),
        *,
        factor: float = 2.0,
        maximum: DurationLike = dt.timedelta(minutes=10),
        jitter: float = 0.2,
    ) -> Backoff:
        """Build a policy from durations in any form stepq takes: a timedelta, a string ("500ms",
        "30s") or an int of milliseconds, as everywhere else (``Backoff.of(100, maximum="30s")``)."""
        if factor < 1:
            raise FunctionConfigError(f"Backoff.factor: must be at least 1, got {factor}")
        if not 0 <= jitter <= 1:
            raise FunctionConfigError(f"Backoff.jitter: must be between 0 and 1, got {jitter}")
        return cls(
            initial=to_timedelta(initial, what="Backoff.initial"),
            factor=factor,
            maximum=to_timedelta(maximum, what="Backoff.maximum"),
            jitter=jitter,
        )

    def to_dict(self) -> dict[str, float]:
        """Seconds and factors, as function configs and opcodes carry them."""
        return {
            "initial": self.initial.total_seconds(),
            "factor": self.factor,
            "maximum": self.maximum.total_seconds(),
            "jitter": self.jitter,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Backoff:
        """The inverse of ``to_dict``; missing fields take the defaults.

        Here a number is seconds (what ``to_dict`` writes, and what the configs of apps served over
        HTTP carry), not milliseconds as in ``of``: this is the wire, not user code.
        """
        return cls.of(
            _wire_duration(raw.get("initial", 1.0), "Backoff.initial"),
            factor=float(raw.get("factor", 2.0)),
            maximum=_wire_duration(raw.get("maximum", 600.0), "Backoff.maximum"),
            jitter=float(raw.get("jitter", 0.2)),
        )

    def delay(self, failures: int) -> dt.timedelta:
        """The wait after the ``failures``-th failed attempt (1 for the first failure)."""
        return self.delay_drawn(failures, random.random())

    def delay_drawn(self, failures: int, draw: float) -> dt.timedelta:
        """``delay`` with its jitter drawn by the caller (``draw`` in [0, 1)), so that code deciding a
        retry stays a pure function of its inputs."""
        base = self.initial.total_seconds() * self.factor ** max(0, failures - 1)
        base = min(base, self.maximum.total_seconds())
        return dt.timedelta(seconds=base * (1 - self.jitter * draw))


def _wire_duration(value: Any, what: str) -> dt.timedelta | str:
    """A backoff duration from a config or opcode: a number of seconds, or a duration string."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{what}: must be a finite number of seconds, not negative, got {value!r}")
        try:
            return dt.timedelta(seconds=value)
        except OverflowError:
            raise ValueError(f"{what}: {value!r} seconds is too long a duration") from None
    if isinstance(value, str):
        return value
    raise ValueError(f"{what}: expected seconds or a duration string, got {type(value).__name__}")
