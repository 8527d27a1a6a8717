"""An online store's background work, written to show every kind of step on the dashboard.

``scripts/screenshots`` runs a worker for it (``stepq worker examples.store:client``) and sends a
mix of events, so the dashboard's pages show real runs: completed, failed after retries, sleeping,
waiting for an event, a parallel group and an invoked child run. Nothing here calls the network;
the "upstream" failures are decided by the event's data so that the pictures are the same each time.

Try it by hand with ``stepq dev examples.store:client``, then::

    stepq send shop/order.placed --data '{"order_id": 1042, "total": 59.90, "follow_up": "2s"}'
    stepq send shop/refund.requested --data '{"order_id": 1042, "amount": 19.90}'
    stepq send shop/catalog.sync --data '{"supplier": "north-wind", "pages": 4, "broken_page": 3}'
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import stepq as inngest

client = inngest.Inngest(app_id="acme-store")

#: Short waits between attempts, so that a run with a retry finishes within a second.
QUICK = inngest.Backoff.of("200ms")


@client.create_function(id="generate-invoice", trigger=inngest.TriggerEvent(event="shop/invoice.requested"))
async def generate_invoice(ctx: inngest.Context) -> dict[str, Any]:
    """Render an order's invoice and file it: invoked by ``process-order`` as a child run."""
    order_id = int(ctx.event.data["order_id"])
    total = float(ctx.event.data["total"])

    def render() -> dict[str, Any]:
        return {"number": f"INV-2026-{order_id:05d}", "total": total, "currency": "EUR"}

    invoice: dict[str, Any] = await ctx.step.run("render-pdf", render)

    def store() -> str:
        digest = hashlib.sha256(repr(invoice).encode()).hexdigest()[:12]
        return f"s3://acme-invoices/2026/{invoice['number']}-{digest}.pdf"

    invoice["url"] = await ctx.step.run("store-pdf", store)
    return invoice


@client.create_function(
    id="process-order",
    trigger=inngest.TriggerEvent(event="shop/order.placed"),
    retries=3,
    backoff=QUICK,
    # The payment gateway takes 10 calls at once from us.
    concurrency=[inngest.Concurrency(limit=10)],
)
async def process_order(ctx: inngest.Context) -> dict[str, Any]:
    """Charge, fulfil in parallel, invoice (a child run), then sleep until the follow-up email."""
    data = ctx.event.data
    order_id = int(data["order_id"])
    attempt = ctx.attempt

    await ctx.step.run("validate-order", lambda: {"order_id": order_id, "items": data.get("items", 2)})

    def charge() -> dict[str, Any]:
        if data.get("gateway_hiccup") and attempt == 0:
            raise TimeoutError("payment gateway did not answer within 10 s")
        return {"charge_id": f"ch_{order_id:06d}", "amount": data["total"]}

    charge_result: dict[str, Any] = await ctx.step.run("charge-card", charge)

    def fulfil(what: str) -> Callable[[], Awaitable[Any]]:
        return lambda: ctx.step.run(what, lambda: {"order_id": order_id, "done": what})

    await ctx.group.parallel((fulfil("reserve-inventory"), fulfil("notify-warehouse"), fulfil("email-receipt")))
    invoice = await ctx.step.invoke(
        "generate-invoice", function=generate_invoice, data={"order_id": order_id, "total": data["total"]}
    )
    await ctx.step.sleep("until-follow-up", data.get("follow_up", "3d"))
    await ctx.step.run("send-follow-up", lambda: f"asked order {order_id} for a review")
    return {"charge": charge_result["charge_id"], "invoice": invoice["number"]}


@client.create_function(
    id="refund-approval",
    trigger=inngest.TriggerEvent(event="shop/refund.requested"),
    # One refund request per order a day: a customer clicking twice opens one ticket.
    idempotency="event.data.order_id",
)
async def refund_approval(ctx: inngest.Context) -> dict[str, Any]:
    """Open a ticket, then wait (up to two days) for a manager to approve the refund."""
    order_id = int(ctx.event.data["order_id"])
    ticket: str = await ctx.step.run("open-ticket", lambda: f"SUP-{order_id}")
    approval = await ctx.step.wait_for_event(
        "manager-approval",
        event="shop/refund.approved",
        timeout="2d",
        if_exp="async.data.order_id == event.data.order_id",
    )
    if approval is None:
        return {"ticket": ticket, "refunded": False}
    await ctx.step.run("refund", lambda: {"order_id": order_id, "amount": ctx.event.data["amount"]})
    return {"ticket": ticket, "refunded": True}


@client.create_function(
    id="sync-catalog",
    trigger=inngest.TriggerEvent(event="shop/catalog.sync"),
    retries=2,
    backoff=QUICK,
    # Suppliers ask for at most one full import a minute each.
    throttle=inngest.Throttle(limit=1, period=dt.timedelta(minutes=1), key="event.data.supplier"),
)
async def sync_catalog(ctx: inngest.Context) -> dict[str, Any]:
    """Import a supplier's catalog page by page; a page the supplier cannot serve fails the run."""
    supplier = str(ctx.event.data["supplier"])
    broken = ctx.event.data.get("broken_page")
    imported = 0
    for page in range(1, int(ctx.event.data["pages"]) + 1):

        def fetch(page: int = page) -> int:
            if page == broken:
                raise ConnectionError(f"{supplier} answered 503 Service Unavailable for page {page}")
            return 50

        imported += await ctx.step.run(f"fetch-page-{page}", fetch)
    return {"supplier": supplier, "imported": imported}


@client.create_function(id="nightly-report", trigger=inngest.TriggerCron(cron="TZ=Europe/Paris 0 3 * * *"))
async def nightly_report(ctx: inngest.Context) -> str:
    """Yesterday's sales, mailed to the team at 3 a.m. Paris time."""
    total: float = await ctx.step.run("sum-sales", lambda: 0.0)
    return await ctx.step.run("mail-report", lambda: f"sales report sent: {total:.2f} EUR")
