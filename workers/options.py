"""How a worker process runs: its options, from defaults, environment variables and the command line."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .registration import DEFAULT_REFRESH_S


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker process runs; each has an environment variable for containers."""

    #: Jobs (step invocations) run at once by this process (STEPQ_CONCURRENCY).
    concurrency: int = 100
    #: An idle worker blocks on the queue's ready list this long at a time, then checks the queue
    #: anyway (STEPQ_IDLE_CHECK): what an idle worker costs Redis, about one command per 2 s.
    idle_check_s: float = 4.0
    #: How long one invocation (one step) may run (STEPQ_STEP_TIMEOUT).
    step_timeout_s: float = 2 * 3600
    #: A running job's lock; renewed every third of it while the job runs (STEPQ_LEASE).
    lease_s: float = 10.0
    #: On SIGTERM, how long running steps may take to finish before they are handed back (STEPQ_DRAIN_GRACE).
    drain_grace_s: float = 30.0
    #: How often a worker checks for sleeping runs whose wake-up job vanished (STEPQ_TIMER_SWEEP).
    timer_sweep_s: float = 30.0
    #: How often a worker looks for outbox messages whose sender died, on one Redis; with several
    #: shards it looks at one shard per min(5 s, this) (STEPQ_OUTBOX_SWEEP; runtime/outbox.py).
    outbox_sweep_s: float = 10.0
    #: A wake-up this late with no job is re-enqueued (STEPQ_TIMER_OVERDUE).
    timer_overdue_s: float = 60.0
    #: After an outage, the newest missed cron tick still fires if at most this old (STEPQ_CRON_CATCH_UP).
    cron_catch_up_s: float = 600.0
    #: How often the watchdog probes Redis on its own connection (STEPQ_REDIS_CHECK).
    redis_check_s: float = 1.0
    #: A probe unanswered this long (twice in a row) means Redis is unreachable (STEPQ_REDIS_CHECK_TIMEOUT).
    redis_check_timeout_s: float = 1.5
    #: How often a worker re-registers its app's functions while it runs (STEPQ_REGISTRATION_REFRESH).
    registration_refresh_s: float = DEFAULT_REFRESH_S
    #: ``/livez`` answers 503 once the event loop's heartbeat is this old (STEPQ_LIVENESS_TIMEOUT).
    liveness_timeout_s: float = 30.0

    @classmethod
    def from_env(cls, **overrides: Any) -> WorkerOptions:
        """Defaults, then environment variables, then explicit ``overrides`` (None means unset)."""
        values: dict[str, Any] = {}
        for field, (variable, kind) in _ENV.items():
            raw = os.environ.get(variable)
            if raw:
                try:
                    values[field] = kind(raw)
                except ValueError:
                    raise ValueError(f"{variable} must be a {kind.__name__}, got {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        options = cls(**values)
        options.check()
        return options

    def check(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        positive = (
            "idle_check_s",
            "step_timeout_s",
            "lease_s",
            "timer_sweep_s",
            "outbox_sweep_s",
            "redis_check_s",
            "redis_check_timeout_s",
            "registration_refresh_s",
            "liveness_timeout_s",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.drain_grace_s < 0:
            raise ValueError(f"drain grace must not be negative, got {self.drain_grace_s}")


_ENV: dict[str, tuple[str, type[int] | type[float]]] = {
    "concurrency": ("STEPQ_CONCURRENCY", int),
    "idle_check_s": ("STEPQ_IDLE_CHECK", float),
    "step_timeout_s": ("STEPQ_STEP_TIMEOUT", float),
    "lease_s": ("STEPQ_LEASE", float),
    "drain_grace_s": ("STEPQ_DRAIN_GRACE", float),
    "timer_sweep_s": ("STEPQ_TIMER_SWEEP", float),
    "outbox_sweep_s": ("STEPQ_OUTBOX_SWEEP", float),
    "timer_overdue_s": ("STEPQ_TIMER_OVERDUE", float),
    "cron_catch_up_s": ("STEPQ_CRON_CATCH_UP", float),
    "redis_check_s": ("STEPQ_REDIS_CHECK", float),
    "redis_check_timeout_s": ("STEPQ_REDIS_CHECK_TIMEOUT", float),
    "registration_refresh_s": ("STEPQ_REGISTRATION_REFRESH", float),
    "liveness_timeout_s": ("STEPQ_LIVENESS_TIMEOUT", float),
}
