"""Functions for the operator actions' tests (tests/test_actions.py): replay, resume from a step,
bulk actions. The client encrypts (``EncryptionMiddleware``, keys from the worker's
``STEPQ_ENCRYPTION_KEYS``), so every action is also checked on encrypted step outputs.

Every step appends its name to the file named by the clear ``log`` field of the event (so a test
counts executions), and a step fails unless the file named by ``flag`` exists (so a test fixes the
cause of a failure, then replays).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import stepq
from stepq.encryption import EncryptionMiddleware

client = stepq.Client("t-actions", middleware=[EncryptionMiddleware.factory()])


def _note(path: str, what: str) -> str:
    with open(path, "a", encoding="utf-8") as out:
        out.write(what + "\n")
    return f"{what}-done"


def _checked(flag: str, log: str, what: str) -> str:
    if not os.path.exists(flag):
        _note(log, f"{what}-refused")
        raise RuntimeError(f"{what}: the flag {flag} is not set")
    return _note(log, what)


@client.create_function(id="pipeline", trigger=stepq.TriggerEvent(event="actions/pipeline"), retries=0)
async def pipeline(ctx: stepq.Context) -> dict[str, Any]:
    """one, a sleep, a parallel group of three, then ``gate`` (fails unless the flag is set), then
    ``last``; writes its result (decrypted) to ``out``."""
    log, flag = ctx.event.data["log"], ctx.event.data["flag"]
    one = await ctx.step.run("one", _note, log, "one")
    await ctx.step.sleep("nap", ctx.event.data.get("nap", "1s"))

    def branch(i: int) -> Callable[[], Awaitable[str]]:
        return lambda: ctx.step.run(f"p{i}", _note, log, f"p{i}")

    group = await ctx.group.parallel(tuple(branch(i) for i in (1, 2, 3)))
    gate = await ctx.step.run("gate", _checked, flag, log, "gate")
    last = await ctx.step.run("last", _note, log, "last")
    result = {"one": one, "group": list(group), "gate": gate, "last": last}
    with open(ctx.event.data["out"], "w", encoding="utf-8") as out:
        json.dump(result, out)
    return result


@client.create_function(id="doomed", trigger=stepq.TriggerEvent(event="actions/doomed"), retries=0)
async def doomed(ctx: stepq.Context) -> str:
    """One step that fails unless the flag is set: bulk replays."""
    return await ctx.step.run("try", _checked, ctx.event.data["flag"], ctx.event.data["log"], "try")


@client.create_function(id="declined", trigger=stepq.TriggerEvent(event="actions/declined"), retries=2)
async def declined(ctx: stepq.Context) -> str:
    """``one``, then ``charge``: a NonRetriableError unless the flag is set (the run fails at once)."""
    log, flag = ctx.event.data["log"], ctx.event.data["flag"]

    def charge() -> str:
        try:
            return _checked(flag, log, "charge")
        except RuntimeError as exc:
            raise stepq.NonRetriableError(str(exc)) from exc

    one = await ctx.step.run("one", _note, log, "one")
    return one + "," + await ctx.step.run("charge", charge)


@client.create_function(id="sleepy", trigger=stepq.TriggerEvent(event="actions/sleepy"), retries=0)
async def sleepy(ctx: stepq.Context) -> None:
    """Sleeps an hour: a run that is still running (bulk cancel, refusals)."""
    await ctx.step.sleep("long", "1h")
