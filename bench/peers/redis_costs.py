"""What a Redis-backed system (stepq, arq, Celery) costs its Redis: CPU and commands per step under
load (W2), by command name, and commands per second with one idle worker connected; and the round
trip to Redis that a client sees (direct or through bench/peers/slow_link.py)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time

from redis.asyncio import Redis
from redis.asyncio.client import Monitor

from bench.common import command_calls, io_stats, median, redis_cpu

#: Our own readings' INFO calls that fall between two readings' command totals.
_OWN_COMMANDS = 2


@dataclasses.dataclass(frozen=True, slots=True)
class Reading:
    cpu_s: float
    commands: int
    #: Calls per command name since the server started (INFO commandstats; scripts' calls included).
    calls: dict[str, int]


async def read(redis: Redis) -> Reading:
    """Redis's CPU seconds, commands processed and calls by command so far (three INFO calls)."""
    calls = await command_calls(redis)
    cpu = await redis_cpu(redis)
    return Reading(cpu, (await io_stats(redis))["total_commands_processed"], calls)


async def per_step(redis: Redis, before: Reading, steps: int) -> dict[str, float]:
    """CPU and commands per step since ``before``; ``cmd:NAME`` keys: calls of each command per step
    (a script's own calls counted under their names, as Redis counts them; our INFO calls left out)."""
    after = await read(redis)
    out = {
        "w2_redis_cpu_ms_per_step": 1000 * (after.cpu_s - before.cpu_s) / steps,
        # Lua scripts' commands are in Redis's total too.
        "w2_redis_commands_per_step": (after.commands - before.commands - _OWN_COMMANDS) / steps,
    }
    for name, calls in after.calls.items():
        delta = calls - before.calls.get(name, 0)
        if delta and name != "info":
            out[f"cmd:{name}"] = delta / steps
    return out


async def idle_rate(url: str, seconds: float) -> dict[str, float]:
    """With one idle worker connected and nothing submitted: the commands per second clients send
    Redis (``idle_commands_per_s``; each costs a round trip and a dispatch) and the calls per
    second Redis runs, Lua scripts' own included (``idle_redis_calls_per_s``), counted with
    MONITOR (our own MONITOR and INFO calls left out)."""
    tap = CommandTap(url)
    await tap.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await tap.stop()
    sent = sum(n for (where, _), n in tap.counts.items() if where == "top")
    total = sum(tap.counts.values())
    return {"idle_commands_per_s": sent / seconds, "idle_redis_calls_per_s": total / seconds}


async def ping_rtt_ms(url: str, samples: int = 200) -> float:
    """The p50 of ``samples`` sequential PINGs on one connection to ``url`` (ms)."""
    client = Redis.from_url(url)
    try:
        await client.ping()  # connect first
        rtts = []
        for _ in range(samples):
            began = time.perf_counter()
            await client.ping()
            rtts.append(1000 * (time.perf_counter() - began))
        return median(rtts)
    finally:
        await client.aclose()


class CommandTap:
    """Counts the commands Redis runs while it listens (MONITOR), split into those clients send
    ("top") and those Lua scripts call ("lua"). MONITOR slows Redis: a separate, smaller pass."""

    def __init__(self, url: str) -> None:
        self.client = Redis.from_url(url)
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._ready.wait(), 10)

    async def _listen(self) -> None:
        async with Monitor(self.client.connection_pool) as monitor:
            self._ready.set()
            assert monitor.connection is not None
            while True:
                line = await monitor.connection.read_response(disable_decoding=True)
                assert isinstance(line, bytes)
                # b'1700000000.123456 [0 127.0.0.1:5555] "EVALSHA" "..." ...' or [0 lua] for a script's call
                _, _, source, rest = line.split(b" ", 3)
                name = rest.split(b'"', 2)[1].decode(errors="replace").lower()
                self.counts["lua" if source == b"lua]" else "top", name] += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.aclose()

    def per_step(self, steps: int, prefix: str = "mon") -> dict[str, float]:
        """``{prefix}:top:NAME`` and ``{prefix}:lua:NAME``: calls per step in the pass."""
        return {f"{prefix}:{where}:{name}": n / steps for (where, name), n in self.counts.items()}
