"""README's "Writing functions" block: the app's own code it calls (a card charge, emails, a ledger,
an invoicing function of another app) and a check of the run up to its 30-minute sleep."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import stepq as inngest

if TYPE_CHECKING:
    from tests.readme.harness import ReadmeBlock

__all__ = ["charge_card", "make_invoice", "notify_ops", "send_email", "write_ledger"]

invoices = inngest.Client("billing-invoices")


def charge_card(order_id: int) -> dict[str, str]:
    return {"receipt": f"r-{order_id}"}


def send_email(receipt: dict[str, str]) -> None:
    pass


def write_ledger(receipt: dict[str, str]) -> None:
    pass


async def notify_ops(ctx: inngest.Context) -> None:
    pass


@invoices.create_function(id="make-invoice", trigger=inngest.TriggerEvent(event="billing/invoice.requested"))
async def make_invoice(ctx: inngest.Context) -> dict[str, Any]:
    return {"invoice": ctx.event.data["receipt"]}


async def check(block: ReadmeBlock) -> None:
    """The filter keeps free orders out; a paid order charges its card, then sleeps 30 minutes (as
    far as a test can follow it), and its cancellation event cancels it."""
    block.start_worker()
    client = block.load().client

    [free] = await client.send(inngest.Event(name="order/placed", data={"id": 1, "total": 0}))
    [paid] = await client.send(inngest.Event(name="order/placed", data={"id": 2, "total": 30}))

    sleeping = await block.run_of("charge", paid, statuses=("sleeping",))
    charged = sleeping.steps[0]
    assert (charged.name, charged.memo) == ("charge-card", {"data": {"receipt": "r-2"}}), sleeping.steps
    assert sleeping.wake_at_ms is not None
    assert sleeping.wake_at_ms - time.time() * 1000 > 29 * 60 * 1000, sleeping
    assert await block.runs_for(free, "charge") == []

    await client.send(inngest.Event(name="order/cancelled", data={"id": 2}))
    cancelled = await block.run_of("charge", paid)
    assert cancelled.status == "cancelled", cancelled
