"""Which functions an app serves, found by the id the executor calls."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..client import FUNCTION_FAILED, Client
from ..errors import FunctionConfigError
from ..function import MAX_RETRIES, Function
from ..triggers import TriggerEvent
from .messages import Refusal


class ServedFunctions:
    """The functions given to ``serve`` (with their failure handlers), or the client's current ones."""

    def __init__(self, client: Client, functions: Sequence[Function] | None) -> None:
        self.client = client
        self._explicit = None if functions is None else self._with_failure_handlers(functions)
        self._variants: dict[tuple[str, int], tuple[Function, Function]] = {}

    def _with_failure_handlers(self, functions: Sequence[Function]) -> dict[str, Function]:
        if isinstance(functions, Function):
            functions = [functions]
        served: dict[str, Function] = {}
        known = self.client.functions
        for fn in functions:
            if not isinstance(fn, Function):
                raise FunctionConfigError(f"serve: functions must be stepq.Function objects, got {fn!r}")
            if fn.app_id != self.client.app_id:
                raise FunctionConfigError(
                    f"serve: function {fn.id!r} belongs to app {fn.app_id!r}, not {self.client.app_id!r}"
                )
            found = [fn]
            failure = known.get(f"{fn.id}-failure")
            if failure is not None and any(
                isinstance(t, TriggerEvent) and t.event == FUNCTION_FAILED for t in failure.triggers
            ):
                found.append(failure)
            for item in found:
                other = served.get(item.slug)
                if other is not None and other is not item:
                    raise FunctionConfigError(f"serve: two functions share the id {item.slug!r}")
                served[item.slug] = item
        return served

    def by_slug(self) -> dict[str, Function]:
        """The served functions by slug (``<app_id>-<id>``)."""
        if self._explicit is not None:
            return self._explicit
        return {fn.slug: fn for fn in self.client.functions.values()}

    def find(self, fn_id: str) -> Function:
        """The function the executor calls by ``fnId`` (its slug, or its bare id)."""
        served = self.by_slug()
        fn = served.get(fn_id) or served.get(f"{self.client.app_id}-{fn_id}")
        if fn is None:
            names = sorted(served)
            listed = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
            raise Refusal(
                500,
                "function_not_found",
                f"function {fn_id!r} is not served by app {self.client.app_id!r} (it serves: {listed or 'nothing'})",
                name="FunctionNotFoundError",
            )
        return fn

    def with_max_attempts(self, fn: Function, max_attempts: int | None) -> Function:
        """The function with the executor's ``max_attempts`` (it knows the synced config) when it differs."""
        if max_attempts is None or max_attempts == fn.max_attempts or not 1 <= max_attempts <= MAX_RETRIES + 1:
            return fn
        key = (fn.slug, max_attempts)
        cached = self._variants.get(key)
        if cached is not None and cached[0] is fn:
            return cached[1]
        variant = dataclasses.replace(fn, retries=max_attempts - 1)
        if len(self._variants) < 10_000:
            self._variants[key] = (fn, variant)
        return variant
