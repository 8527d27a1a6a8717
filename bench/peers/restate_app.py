"""The peers workflow on Restate (``restate-sdk``, served by hypercorn over h2c), and its submitter.

A service ``peer`` with one handler ``run``: ``ctx.run_typed`` per step, ``ctx.sleep`` for the
sleep; invoked with the ingress's fire-and-forget ``POST /peer/run/send``. Runs in the peers' venv:

    hypercorn bench.peers.restate_app:app --bind 127.0.0.1:PORT
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Sequence
from typing import Any

import httpx
import restate  # type: ignore[import-not-found, unused-ignore]

from bench.peers.env import INGRESS_ENV
from bench.peers.marks import apush, now

SERVICE = "peer"
HANDLER = "run"
#: Concurrent ingress connections for a batch (W2).
CONNECTIONS = 16


async def anow() -> float:
    return now()


async def _run(ctx: Any, data: dict[str, Any]) -> None:
    """``n`` steps; with ``sleep`` > 0 a durable sleep after the first."""
    stamps: list[float] = []
    for i in range(int(data["n"])):
        stamps.append(await ctx.run_typed("s", anow))
        if i == 0 and float(data.get("sleep") or 0) > 0:
            await ctx.sleep(dt.timedelta(seconds=float(data["sleep"])))
    await apush(data, stamps)


service: Any = restate.Service(SERVICE)
service.handler(name=HANDLER)(_run)
app: Any = restate.app(services=[service])


class Submitter:
    """Sends runs to the ingress. A batch is sent with a common ``?delay=`` so that every run becomes
    due at one instant after the last send was accepted: W2 then times Restate from that instant, and
    its ingress (1.6-3 s for 300 durable sends on this kind of machine) is not what it measures."""

    def __init__(self) -> None:
        self.url = f"{os.environ[INGRESS_ENV]}/{SERVICE}/{HANDLER}/send"
        self.http = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=CONNECTIONS))

    async def _send(self, run: dict[str, Any], delay_ms: int | None = None) -> None:
        params = {"delay": f"{delay_ms}ms"} if delay_ms else None
        response = await self.http.post(self.url, json=run, params=params)
        response.raise_for_status()

    async def submit(self, runs: Sequence[dict[str, Any]]) -> None:
        for run in runs:
            await self._send(dict(run))

    async def submit_at(self, runs: Sequence[dict[str, Any]]) -> float:
        """Send a batch to become due together; return the instant it is due. If the sends take longer
        than foreseen, the late ones start on arrival and the clock still starts at the due time, so
        the figure then includes ingress (the JSON says so: ``w2_sends_overran``)."""
        due = time.time() + max(1.0, 0.02 * len(runs))
        gate = asyncio.Semaphore(CONNECTIONS)

        async def one(run: dict[str, Any]) -> None:
            async with gate:
                await self._send(run, max(1, round((due - time.time()) * 1000)))

        await asyncio.gather(*(one(dict(r)) for r in runs))
        return due

    async def aclose(self) -> None:
        await self.http.aclose()
