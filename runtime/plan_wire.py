"""A ``Plan`` as apply_plan.lua takes it: the KEYS it touches and one msgpack ARGV.

The blob is ``[head, kind, body]`` (arrays, not maps: it is sent on every step). ``head`` is what
every write needs (the run, its claim, the time, the defaults, the nudge); ``body`` the write's own
fields, in the order the script's function for ``kind`` reads them; the head ends with the job
applying the plan (``JobLease``), which the script ends and may hand the run's next job, and the
fields of the write's entry in the run's history (runtime/history.py), packed once. The KEYS
are the run's eight, then the write's own in the order the script consumes them.
"""

from __future__ import annotations

from typing import Any

import msgpack

from . import history, keys
from .codec import pack
from .jobs import JobKind, JobSpec, encode_around_position, enqueue_keys
from .limits import Limits
from .plan import Commit, FanOut, Finish, JobLease, Plan, Resolve, Retry, Sleep
from .run_status import RunStatus
from .shards import shard_of


def timer_member(job: JobSpec, queue_id: str) -> str:
    """The timers-zset member of a sleep's wake job: ``queue|run|position``.

    Kept under 64 bytes so that the run's record stays a compact listpack hash in Redis; the step key
    that completes the wake job is the run's ``sleep_key`` field."""
    return f"{queue_id}|{job.run_id}|{job.position}"


def encode(
    plan: Plan, *, defaults: Limits, grace_ms: int, lease: JobLease | None = None
) -> tuple[list[str], bytes, bytes]:
    """(KEYS, ARGV[1]) of apply_plan.lua for ``plan``, and a commit's next job's payload (b"" for
    other writes: the job the script may hand to ``lease``'s worker).

    ``defaults``: the limits a run without its own lives within; ``grace_ms``: how long a queued
    job's key lives past its due time; ``lease``: the job applying the plan, ended by the same call
    (and handed the run's next job, if it may)."""
    run_id, at = plan.run_id, plan.now_ms
    write = plan.write
    # A commit's next job is the run's plain job at the next position: the nudge's halves make it.
    plain_next = isinstance(write, Commit) and _plain_step_job(write.next_job, run_id)
    around = encode_around_position(run_id, at) if plan.nudge or plain_next else (b"", b"")
    prefix, suffix = around if plan.nudge else (b"", b"")
    head = [
        run_id,
        plan.fence_field,
        plan.fence,
        plan.position,
        at,
        grace_ms,
        defaults.max_state_bytes,
        defaults.retention_s,
        plan.nudge,
        prefix,
        suffix,
        lease.job_id if lease else "",
        lease.token if lease else "",
        int(lease is not None and lease.may_hand_off),
        lease.lease_ms if lease else 0,
        history_fields(plan),
    ]
    shard = shard_of(run_id)
    run_keys = [
        keys.run(run_id),
        keys.memo(run_id),
        keys.stack(run_id),
        keys.steps(run_id),
        keys.pending(run_id),
        keys.jobs(run_id),
        keys.timers(shard),
        keys.queue(shard, plan.queue_id),
    ]
    if isinstance(write, Commit):
        nxt = write.next_job
        payload = around[0] + msgpack.packb(nxt.position) + around[1] if plain_next else nxt.encode(at)
        body = [write.key, write.name, pack(write.value), write.attempts, write.duration_ms, payload]
        kind, more_keys, next_payload = "commit", _job_keys(nxt), payload
    else:
        (kind, body, more_keys), next_payload = _write(plan), b""
    # Redis's cmsgpack knows no bin type: bytes travel as msgpack's old raw strings.
    return run_keys + more_keys, msgpack.packb([head, kind, body], use_bin_type=False), next_payload


def history_fields(plan: Plan) -> bytes:
    """The fields of the run's history entry for ``plan``'s write (see runtime/history.py)."""
    write, attempt = plan.write, plan.attempt or None
    started = plan.started_ms or None
    if isinstance(write, Commit | Resolve):
        kind = history.K_COMMIT if isinstance(write, Commit) else history.K_RESOLVE
        failed = write.value.get("error") if isinstance(write.value, dict) and "data" not in write.value else None
        return history.entry(
            kind,
            key=write.key,
            name=write.name,
            attempt=write.attempts,
            started_ms=started,
            error=history.error_fields(failed),
        )
    if isinstance(write, Retry):
        return history.entry(
            history.K_RETRY,
            key=write.key,
            name=write.name,
            attempt=write.attempts,
            started_ms=started,
            error=history.error_fields(write.error),
            retry_at_ms=write.due_ms,
            executed=write.executed,
        )
    if isinstance(write, Sleep):
        return history.entry(
            history.K_SLEEP,
            key=write.key,
            name=write.name,
            attempt=attempt,
            started_ms=started,
            wake_at_ms=write.due_ms,
        )
    if isinstance(write, FanOut):
        return history.entry(
            history.K_FAN_OUT,
            group=plan.position,
            steps=_fanned(write, plan.now_ms),
            attempt=attempt,
            started_ms=started,
        )
    error = history.error_fields(write.error) if write.status is RunStatus.FAILED else None
    raised = write.raised_by
    return history.entry(
        history.K_FINISH,
        status=write.status.value,
        attempt=attempt,
        started_ms=started,
        error=error,
        key=raised.key if raised else None,
        name=raised.name if raised else None,
    )


def _fanned(write: FanOut, at: int) -> list[dict[str, Any]]:
    """What the history keeps of each step of a fan-out (its type, and a wait's or invoke's terms)."""
    records = {record.key: record for record in write.waits}
    steps: list[dict[str, Any]] = []
    for step in write.steps:
        job = step.job
        fields: dict[str, Any] = {"key": step.key, "name": step.name}
        record = records.get(step.key)
        if step.start is not None:
            child = step.start.value if isinstance(step.start.value, dict) else {}
            fields |= {"type": "invoke", "function": child.get("function_id"), "timeout_ms": step.due_ms - at}
        elif record is not None:
            fields |= {"type": "wait", "event": record.event, "if": record.expression, "timeout_ms": step.due_ms - at}
        elif job is not None and job.kind is JobKind.TIMER:
            fields |= {"type": "sleep", "wake_at_ms": step.due_ms}
        else:
            fields["type"] = "step"
        steps.append(fields)
    return steps


def _write(plan: Plan) -> tuple[str, list[Any], list[str]]:
    """The write's kind, body and own KEYS (a commit's are ``encode``'s)."""
    write, at, queue = plan.write, plan.now_ms, plan.queue_id
    assert not isinstance(write, Commit)  # encoded by ``encode`` itself
    if isinstance(write, Resolve):
        return "resolve", [write.key, write.name, pack(write.value), write.attempts, write.duration_ms], []
    if isinstance(write, Retry):
        job = write.job
        planned = int(job.kind is JobKind.PLANNED)
        body = [write.key, write.name, write.attempts, write.error, int(write.executed), planned, job.encode(at)]
        return "retry", [*body, write.due_ms], _job_keys(job)
    if isinstance(write, Sleep):
        body = [write.key, write.name, write.wake.encode(at), write.due_ms, timer_member(write.wake, queue)]
        return "sleep", body, _job_keys(write.wake)
    if isinstance(write, FanOut):
        return _fan_out(write, at)
    assert isinstance(write, Finish)
    field, blob = (
        ("output", pack(write.output)) if write.status is RunStatus.COMPLETED else ("error", pack(write.error))
    )
    raised = write.raised_by
    step = [raised.key, raised.name, raised.attempts, raised.duration_ms, raised.error] if raised else [""]
    return "finish", [write.status.value, field, blob, *step], []


def _fan_out(write: FanOut, at: int) -> tuple[str, list[Any], list[str]]:
    steps: list[list[Any]] = []
    step_keys: list[str] = []
    for step in write.steps:
        job, start, wait = step.job, step.start, step.wait
        steps.append(
            [
                step.key,
                step.name,
                job.encode(at) if job else "",
                step.due_ms or at,
                start.encode(at) if start else "",
                wait.args() if wait else 0,
            ]
        )
        step_keys += _job_keys(job) if job else []
        step_keys += _job_keys(start) if start else []
        step_keys += wait.key_names() if wait else []
    body = [write.join.job_id, write.join.encode(at), write.status.value, int(write.force_plan), steps]
    return "fan_out", body, step_keys


def _plain_step_job(job: JobSpec, run_id: str) -> bool:
    """``job`` is ``JobSpec(run_id, job.position)``: the shape ``encode_around_position`` splits."""
    return (
        job.run_id == run_id
        and job.attempt == 0
        and job.kind is JobKind.STEP
        and job.step_key is None
        and job.value is None
    )


def _job_keys(job: JobSpec) -> list[str]:
    """A job's (job, result) keys: the first two of ``enqueue_keys`` (the queue is the run's)."""
    return enqueue_keys(job, "")[:2]
