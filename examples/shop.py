"""An example app, written the way Inngest's Python docs write functions (``import stepq as inngest``).

Run a worker for it with ``stepq worker examples.shop:client`` (or ``stepq dev examples.shop:client``
for a private Redis), then send events, e.g.::

    stepq send test/simple.function
    stepq send shop/import.requested --data '{"api": "http://127.0.0.1:8080"}'
    stepq send shop/order.placed --data '{"order_id": 42, "email": "ada@example.com"}'

``examples/demo.py`` does all of this in one command and prints what happened.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

import stepq as inngest

client = inngest.Inngest(app_id="shop")

#: The shop API's page size: a shorter page is the last one.
PAGE_SIZE = 50


# -- "Working with loops in Inngest": the simple function, then its fix --------------------------


@client.create_function(
    fn_id="simple-function",
    trigger=inngest.TriggerEvent(event="test/simple.function"),
)
async def simple_function(ctx: inngest.Context) -> None:
    # Outside any step, so it runs on every invocation: 4 times for 3 steps.
    print("hello")

    async def step_a() -> None:
        print("a")

    await ctx.step.run("a", step_a)

    async def step_b() -> None:
        print("b")

    await ctx.step.run("b", step_b)

    async def step_c() -> None:
        print("c")

    await ctx.step.run("c", step_c)


@client.create_function(
    id="simple-function-fixed",
    # Its own event (the docs reuse one id and event for both versions), so each can be run alone.
    trigger=inngest.TriggerEvent(event="test/simple.function.fixed"),
)
async def simple_function_fixed(ctx: inngest.Context) -> None:
    # Inside a step, "hello" prints once: later invocations get the step's memo instead.
    await ctx.step.run("hello", lambda: print("hello"))

    await ctx.step.run("a", lambda: print("a"))
    await ctx.step.run("b", lambda: print("b"))
    await ctx.step.run("c", lambda: print("c"))


# -- The paginated import loop -------------------------------------------------------------------


async def fetch_products(api: str, since_id: int | None) -> dict[str, Any]:
    """One page of the shop's products after ``since_id``; an HTTP error fails (and retries) the step."""
    params: dict[str, int] = {"limit": PAGE_SIZE}
    if since_id is not None:
        params["since_id"] = since_id
    async with httpx.AsyncClient(base_url=api, timeout=10.0) as http:
        response = await http.get("/products.json", params=params)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


@client.create_function(
    id="product-import",
    trigger=inngest.TriggerEvent(event="shop/import.requested"),
)
async def product_import(ctx: inngest.Context) -> dict[str, Any]:
    all_products: list[dict[str, Any]] = []
    cursor: int | None = None
    has_more = True

    # The shop's base URL comes from the event, so it is the same on every re-entry.
    api = ctx.event.data["api"]

    while has_more:
        # One step per page: a failed page retries alone, and finished pages are not fetched again.
        page = await ctx.step.run(f"fetch-products-{cursor}", fetch_products, api, cursor)
        # Combine all of the data into a single list
        all_products.extend(page["products"])
        if len(page["products"]) == PAGE_SIZE:
            cursor = page["products"][PAGE_SIZE - 1]["id"]
        else:
            has_more = False

    # Now we have the entire list of products within all_products!
    return {"count": len(all_products), "ids": [product["id"] for product in all_products]}


# -- A sleep: the run waits in Redis, no worker holds it -----------------------------------------


@client.create_function(
    id="order-follow-up",
    trigger=inngest.TriggerEvent(event="shop/order.placed"),
)
async def order_follow_up(ctx: inngest.Context) -> dict[str, Any]:
    # The clock is non-deterministic, so it is read inside steps.
    placed_at: float = await ctx.step.run("record-order", time.time)

    await ctx.step.sleep("wait", "2s")

    def send_follow_up() -> dict[str, Any]:
        return {
            "sent_to": ctx.event.data.get("email", "customer@example.com"),
            "order_id": ctx.event.data.get("order_id"),
            "waited_s": round(time.time() - placed_at, 2),
        }

    return await ctx.step.run("send-follow-up", send_follow_up)
