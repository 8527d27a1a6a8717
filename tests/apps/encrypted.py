"""An app whose client encrypts with ``EncryptionMiddleware``; its keys come from the worker's
``STEPQ_ENCRYPTION_KEYS`` (a worker started without it has no key).

The functions write what they saw (decrypted) to the file named by the clear ``out`` field of their
event, so that a test can compare it with what Redis holds (ciphertext only).
"""

from __future__ import annotations

import json
from typing import Any

import stepq
from stepq.encryption import EncryptionMiddleware

client = stepq.Client("encrypted", middleware=[EncryptionMiddleware.factory()])


def _write(path: str, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(value, out)


@client.create_function(id="child", retries=0)
async def child(ctx: stepq.Context) -> str:
    return f"{ctx.event.data['encrypted']['secret']}-child"


@client.create_function(id="told", trigger=stepq.TriggerEvent(event="enc/told"), retries=0)
async def told(ctx: stepq.Context) -> str:
    secret: str = ctx.event.data["encrypted"]["secret"]
    _write(ctx.event.data["out"], secret)
    return secret


@client.create_function(id="flow", trigger=stepq.TriggerEvent(event="enc/flow"), retries=0)
async def flow(ctx: stepq.Context) -> dict[str, Any]:
    secret: str = ctx.event.data["encrypted"]["secret"]
    out: str = ctx.event.data["out"]
    step: str = await ctx.step.run("derive", lambda: f"{secret}-step")
    await ctx.step.send_event(
        "tell", stepq.Event(name="enc/told", data={"encrypted": {"secret": f"{secret}-sent"}, "out": f"{out}.told"})
    )
    invoked: str = await ctx.step.invoke("invoke", function=child, data={"encrypted": {"secret": f"{secret}-invoked"}})
    result = {"secret": secret, "step": step, "invoked": invoked}
    _write(out, result)
    return result


@client.create_function(id="rotate", trigger=stepq.TriggerEvent(event="enc/rotate"), retries=0)
def rotate(ctx: stepq.ContextSync) -> dict[str, Any]:
    secret: str = ctx.event.data["encrypted"]["secret"]
    first = ctx.step.run("first", lambda: f"{secret}-first")
    # The condition reads clear fields: encrypted ones cannot be matched.
    go = ctx.step.wait_for_event("go", event="enc/go", timeout="5m", if_exp="async.data.tag == event.data.tag")
    second = ctx.step.run("second", lambda: f"{secret}-second")
    result = {"first": first, "second": second, "go": go.data["encrypted"] if go is not None else None}
    _write(ctx.event.data["out"], result)
    return result


def _failed(ctx: stepq.ContextSync) -> None:
    original = ctx.event.data["event"]["data"]
    _write(original["out"], {"handled": original["encrypted"]["secret"], "error": ctx.event.data["error"]["message"]})


@client.create_function(id="fails", trigger=stepq.TriggerEvent(event="enc/fails"), retries=0, on_failure=_failed)
def fails(ctx: stepq.ContextSync) -> None:
    raise stepq.NonRetriableError("no refunds today")
