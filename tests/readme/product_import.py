"""README's first block, the product import: a shop of 120 products, served 50 a page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import stepq as inngest

if TYPE_CHECKING:
    from tests.readme.harness import ReadmeBlock

__all__ = ["fetch_page"]

PRODUCTS = [{"id": i, "title": f"product {i}"} for i in range(1, 121)]


def fetch_page(cursor: int | None) -> list[dict[str, Any]]:
    """The page of products after ``cursor`` (a product id), from the start when None."""
    start = 0 if cursor is None else [p["id"] for p in PRODUCTS].index(cursor) + 1
    return PRODUCTS[start : start + 50]


async def check(block: ReadmeBlock) -> None:
    block.start_worker()
    app = block.load()

    [event_id] = await app.client.send(inngest.Event(name="shop/import.requested", data={}))

    view = await block.run_of("shopify-product-import", event_id)
    assert (view.status, view.output) == ("completed", {"count": 120}), view
    assert [s.name for s in view.steps] == ["fetch-products-None", "fetch-products-50", "fetch-products-100"]
