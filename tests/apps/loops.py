"""The functions of "Working with Loops in Inngest" (shared/reference/loops-in-inngest.md), in stepq.

Written as the page's Python versions, with ``import stepq as inngest``. The import loop fetches pages
from the URL in the event data (a loopback server the test runs) instead of Shopify.
"""

from __future__ import annotations

from typing import Any

import httpx

import stepq as inngest

client = inngest.Inngest(app_id="t-loops")


@client.create_function(fn_id="simple-function", trigger=inngest.TriggerEvent(event="test/simple.function"))
async def simple_function(ctx: inngest.Context) -> None:
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


@client.create_function(id="simple-function-fixed", trigger=inngest.TriggerEvent(event="test/simple.function.fixed"))
async def simple_function_fixed(ctx: inngest.Context) -> None:
    await ctx.step.run("hello", lambda: print("hello"))

    await ctx.step.run("a", lambda: print("a"))
    await ctx.step.run("b", lambda: print("b"))
    await ctx.step.run("c", lambda: print("c"))


def _fetch_products(base_url: str, since_id: int | None) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/products", params={"since_id": since_id or 0}, timeout=10)
    response.raise_for_status()
    products: dict[str, Any] = response.json()
    return products


async def _import_all(ctx: inngest.Context, step_id: Any) -> dict[str, Any]:
    all_products: list[dict[str, Any]] = []
    cursor: int | None = None
    has_more = True
    base_url = ctx.event.data["base_url"]

    while has_more:
        page = await ctx.step.run(step_id(cursor), _fetch_products, base_url, cursor)
        # Combine all of the data into a single list
        all_products.extend(page["products"])
        if len(page["products"]) == 50:
            cursor = page["products"][49]["id"]
        else:
            has_more = False

    # Now we have the entire list of products within all_products!
    return {"count": len(all_products), "ids": [p["id"] for p in all_products]}


@client.create_function(
    id="shopify-product-import",
    trigger=inngest.TriggerEvent(event="shopify/import.requested"),
    backoff=inngest.Backoff.of("50ms"),
)
async def shopify_product_import(ctx: inngest.Context) -> dict[str, Any]:
    return await _import_all(ctx, lambda cursor: f"fetch-products-{cursor}")


@client.create_function(
    id="shopify-product-import-constant",
    trigger=inngest.TriggerEvent(event="shopify/import.constant"),
    backoff=inngest.Backoff.of("50ms"),
)
async def shopify_product_import_constant(ctx: inngest.Context) -> dict[str, Any]:
    return await _import_all(ctx, lambda cursor: "fetch-page")
