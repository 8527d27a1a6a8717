"""Queue jobs: one job advances one run by one invocation.

Jobs are written by our Lua scripts in arq's format (``{t, f, a, k, et}``, msgpack), so that a
step's commit and the next job's enqueue happen in one atomic round trip. Job ids derive from
(run, position, kind, attempt): a duplicate enqueue collapses onto the job already queued.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import time
from typing import Any

import msgpack

from . import keys
from .shards import shard_of

#: The arq function name every stepq job calls.
ADVANCE = "stepq.advance"
#: The run-record field holding a run's fence (a planned step's is ``fence:<step key>``).
FENCE = "fence"


class JobKind(enum.StrEnum):
    """What a job does (``k`` in its payload)."""

    STEP = "step"  # re-enter the function at a position (first run, next step, retry)
    WAKE = "wake"  # a sleep is over: memoize null for the step, then re-enter
    PLANNED = "planned"  # run one planned (parallel) step
    TIMER = "timer"  # resolve a pending step with a value: a wait's or invoke's timeout, a parallel sleep
    DEADLINE = "deadline"  # cancel the run if it has not finished (Timeouts.finish)
    INVOKE = "invoke"  # start the child run of a pending invoke step (value: function id and payload)


#: Every job's payload names its kind: a dict lookup reads it faster than an enum call.
_KINDS: dict[object, JobKind] = {kind.value: kind for kind in JobKind}


def wake_job_id(run_id: str, position: int | str) -> str:
    """The id of a sleep's wake-up job; the scripts rebuild it from a run's timer (``lua_prelude``)."""
    return f"{run_id}:p{position}:wake"


def step_job_id(run_id: str, position: int | str) -> str:
    """The id of the first attempt's job re-entering a run at ``position`` (``JobSpec(run_id, position)``)."""
    return f"{run_id}:p{position}:a0"


#: The kinds whose job needs a step key (``JobSpec.from_payload`` refuses them without one).
KINDS_WITH_STEP_KEY = frozenset({"wake", "planned", "timer", "invoke"})


def fence_field(kind: JobKind, step_key: str | None) -> str:
    """The run-record field a job's invocation is fenced by: one per planned step, else the run's."""
    return f"{FENCE}:{step_key}" if kind is JobKind.PLANNED else FENCE


def lua_prelude() -> str:
    """``wake_job_id(run_id, position)`` and ``step_job_id(run_id, position)`` in Lua, generated from
    the Python functions; ``ADVANCE``, ``FENCE`` and ``JOB_KINDS`` (kind -> needs a step key), for
    the scripts that read job payloads."""
    kinds = ", ".join(f"{kind.value} = {str(kind.value in KINDS_WITH_STEP_KEY).lower()}" for kind in JobKind)
    return (
        _lua_id_function("wake_job_id", wake_job_id)
        + _lua_id_function("step_job_id", step_job_id)
        + f"local ADVANCE = {keys.lua_string(ADVANCE)}\nlocal FENCE = {keys.lua_string(FENCE)}\n"
        + f"local JOB_KINDS = {{{kinds}}}\n"
    )


def _lua_id_function(name: str, build: Any) -> str:
    run_hole, position_hole = "\x00", "\x01"
    before, _, rest = build(run_hole, position_hole).partition(run_hole)
    middle, _, after = rest.partition(position_hole)
    parts = [keys.lua_string(before) if before else "", "run_id", keys.lua_string(middle), "position"]
    parts.append(keys.lua_string(after) if after else "")
    body = " .. ".join(part for part in parts if part)
    return f"local function {name}(run_id, position) return {body} end\n"


@dataclasses.dataclass(frozen=True, slots=True)
class JobSpec:
    """What a job asks: advance ``run_id``, expected at ``position`` (steps done), ``attempt`` of it."""

    run_id: str
    position: int
    attempt: int = 0
    kind: JobKind = JobKind.STEP
    step_key: str | None = None
    #: A TIMER job's value for the step (null for a timeout or a sleep, an error for an invoke).
    value: Any = None

    @property
    def job_id(self) -> str:
        if self.kind is JobKind.WAKE:
            return wake_job_id(self.run_id, self.position)
        if self.kind is JobKind.PLANNED:
            return f"{self.run_id}:s{self.step_key}:a{self.attempt}"
        if self.kind is JobKind.TIMER:
            return f"{self.run_id}:s{self.step_key}:timer"
        if self.kind is JobKind.DEADLINE:
            return f"{self.run_id}:deadline"
        if self.kind is JobKind.INVOKE:
            return f"{self.run_id}:s{self.step_key}:invoke"
        if self.attempt == 0:
            return step_job_id(self.run_id, self.position)
        return f"{self.run_id}:p{self.position}:a{self.attempt}"

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"r": self.run_id, "p": self.position, "a": self.attempt, "k": self.kind.value}
        if self.step_key is not None:
            out["s"] = self.step_key
        if self.value is not None:
            out["v"] = self.value
        return out

    @classmethod
    def from_payload(cls, raw: Any) -> JobSpec:
        """Parse a job's argument; raises ValueError naming what is wrong."""
        if not isinstance(raw, dict):
            raise ValueError(f"job payload must be a map, got {type(raw).__name__}")
        try:
            run_id, position, attempt = raw["r"], raw["p"], raw.get("a", 0)
            named = raw.get("k", "step")
            kind = (_KINDS.get(named) if isinstance(named, str) else None) or JobKind(named)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"job payload {raw!r} is malformed: {exc}") from None
        if not isinstance(run_id, str) or not isinstance(position, int) or not isinstance(attempt, int):
            raise ValueError(f"job payload {raw!r} has fields of the wrong type")
        step_key = raw.get("s")
        if kind.value in KINDS_WITH_STEP_KEY and not isinstance(step_key, str):
            raise ValueError(f"job payload {raw!r} needs a step key for a {kind.value} job")
        return cls(run_id, position, attempt, kind, step_key if isinstance(step_key, str) else None, raw.get("v"))

    def encode(self, now_ms: int | None = None) -> bytes:
        """The job's bytes as arq stores them under ``arq:job:<id>``."""
        return msgpack.packb(
            {
                "t": None,
                "f": ADVANCE,
                "a": [self.to_payload()],
                "k": {},
                "et": now_ms if now_ms is not None else int(time.time() * 1000),
            }
        )


def encode_around_position(run_id: str, now_ms: int) -> tuple[bytes, bytes]:
    """``JobSpec(run_id, position).encode(now_ms)`` without its position: the bytes before and after
    the msgpack integer, for a script that learns the position itself (prefix + pack(position) +
    suffix is the job's payload)."""
    before_run, after_run, before_time = _around_position()
    return before_run + msgpack.packb(run_id) + after_run, before_time + msgpack.packb(now_ms)


@functools.cache
def _around_position() -> tuple[bytes, bytes, bytes]:
    """The constant parts of ``encode_around_position`` (every warm step hop encodes it): what
    comes before the run id, between the run id and the position, and between the position and
    the time."""
    packer = msgpack.Packer()
    payload = JobSpec("", 0).to_payload()
    head = {"t": None, "f": ADVANCE}
    before_run = packer.pack_map_header(5) + b"".join(packer.pack(k) + packer.pack(v) for k, v in head.items())
    before_run += packer.pack("a") + packer.pack_array_header(1) + packer.pack_map_header(len(payload))
    before_run += packer.pack("r")
    rest = {k: v for k, v in payload.items() if k not in ("r", "p")}
    before_time = b"".join(packer.pack(k) + packer.pack(v) for k, v in rest.items())
    before_time += packer.pack("k") + packer.pack({}) + packer.pack("et")
    return before_run, packer.pack("p"), before_time


def enqueue_keys(job: JobSpec, queue_id: str) -> list[str]:
    """The KEYS an enqueue needs, in the order the Lua ``enqueue`` helper expects.

    ``queue_id`` names the queue (``keys.queue``, in the run's shard): the app's id for functions its
    workers import, ``@http`` for functions served over HTTP."""
    return [keys.job(job.job_id), keys.result(job.job_id), keys.queue(shard_of(job.run_id), queue_id)]
