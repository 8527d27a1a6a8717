"""The bounds every run lives within; each is configurable, with Inngest's numbers as defaults.

A run lives within its function's limits: those of the process that registered the function (its
app's workers, or the API for functions served over HTTP), carried in the function's config. So a
limit a deployment sets on its workers holds for every write to their runs, whichever process makes
it (an app resolving a wait with the event it sends, the API cancelling a run).
"""

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
    #: Window of a function's ``idempotency`` key: at most one run per key value within it
    #: (Inngest's 24 h). Read where events are sent (the API, workers, apps' clients).
    idempotency_s: int = DAY
    #: How long a queued job's key lives past its due time (arq's default is one day).
    job_grace_ms: int = 30 * DAY * 1000

    #: The limits that travel with a function's config (see the module docstring).
    RUN_FIELDS = ("max_steps", "max_output_bytes", "max_state_bytes", "retention_s")

    def to_config(self) -> dict[str, int]:
        """The run limits, for a function's registered config."""
        return {field: getattr(self, field) for field in self.RUN_FIELDS}

    def with_config(self, raw: object) -> Limits:
        """These limits with a function config's ``limits`` applied (fields that are not positive
        integers are ignored: the config was checked when it was registered)."""
        if not isinstance(raw, dict):
            return self
        found = {
            field: raw[field]
            for field in self.RUN_FIELDS
            if isinstance(raw.get(field), int) and not isinstance(raw[field], bool) and raw[field] > 0
        }
        return dataclasses.replace(self, **found) if found else self

    def run_record(self) -> str:
        """What a run's record keeps of these limits for the Lua scripts that write to it: the state
        limit and the retention, as ``"<max_state_bytes>,<retention_s>"``, or "" when they are the
        defaults (a run without the field lives within those)."""
        default = Limits()
        if (self.max_state_bytes, self.retention_s) == (default.max_state_bytes, default.retention_s):
            return ""
        return f"{self.max_state_bytes},{self.retention_s}"

    @classmethod
    def from_env(cls) -> Limits:
        """Defaults overridden by ``STEPQ_MAX_STEPS``, ``STEPQ_MAX_OUTPUT_BYTES``,
        ``STEPQ_MAX_STATE_BYTES``, ``STEPQ_RETENTION_S``, ``STEPQ_IDEMPOTENCY_TTL_S`` (the window of
        functions' idempotency keys, in seconds: 86400 unless set, shorter for tests)."""

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
            idempotency_s=read("STEPQ_IDEMPOTENCY_TTL_S", base.idempotency_s),
        )
