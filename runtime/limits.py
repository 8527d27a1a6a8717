"""The bounds every run lives within; each is configurable, with Inngest's numbers as defaults."""

from __future__ import annotations

import dataclasses
import os

MiB = 1024 * 1024
DAY = 86400


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    max_steps: int = 1000
    max_output_bytes: int = 4 * MiB
    max_state_bytes: int = 32 * MiB
    #: How long a finished run (and a stored event) is kept before Redis expires it.
    retention_s: int = 7 * DAY
    #: Window in which a user-supplied event id starts each function at most once.
    dedupe_s: int = DAY
    #: How long a queued job's key lives past its due time (arq's default is one day).
    job_grace_ms: int = 30 * DAY * 1000

    @classmethod
    def from_env(cls) -> Limits:
        """Defaults overridden by ``STEPQ_MAX_STEPS``, ``STEPQ_MAX_OUTPUT_BYTES``,
        ``STEPQ_MAX_STATE_BYTES``, ``STEPQ_RETENTION_S``."""

        def read(name: str, default: int) -> int:
            raw = os.environ.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {raw!r}") from None
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
            return value

        base = cls()
        return cls(
            max_steps=read("STEPQ_MAX_STEPS", base.max_steps),
            max_output_bytes=read("STEPQ_MAX_OUTPUT_BYTES", base.max_output_bytes),
            max_state_bytes=read("STEPQ_MAX_STATE_BYTES", base.max_state_bytes),
            retention_s=read("STEPQ_RETENTION_S", base.retention_s),
        )
