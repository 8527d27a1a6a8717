"""Stand-ins for the names the loop example of "Working with Loops in Inngest" uses but never defines:
``database.get_shopify_session`` and ``shopify.Product.all``.

The shop holds ``TOTAL_PRODUCTS`` products; ``Product.all`` returns a page of up to 50 with an id
above ``since_id``, as JSON (``{"products": [{"id", "title"}, ...]}``), the only kind of value a
step can return; each call appends ``since_id`` to the file named by ``STEPQ_TEST_SHOP_LOG``.
"""

from __future__ import annotations

import os
from typing import Any

TOTAL_PRODUCTS = 120
PAGE_SIZE = 50


class _Database:
    async def get_shopify_session(self, store_id: str) -> str:
        return f"session-for-{store_id}"


class _Product:
    @staticmethod
    def all(session: str, since_id: int | None) -> dict[str, Any]:
        with open(os.environ["STEPQ_TEST_SHOP_LOG"], "a") as log:
            log.write(f"{since_id}\n")
        first = (since_id or 0) + 1
        ids = range(first, min(first + PAGE_SIZE, TOTAL_PRODUCTS + 1))
        return {"products": [{"id": i, "title": f"product {i}", "session": session} for i in ids]}


class _Shopify:
    Product = _Product


database = _Database()
shopify = _Shopify()
