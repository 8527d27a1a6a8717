"""How a worker calls a function: in-process here; over HTTP for served apps."""

from __future__ import annotations

from typing import Any, Protocol

from stepq.engine import ExecutionResult, execute
from stepq.function import Function
from stepq.replay import ExecutionRequest


class Invoker(Protocol):
    async def invoke(self, fn: Any, request: ExecutionRequest) -> ExecutionResult: ...


class InProcessInvoker:
    """Runs the engine in this process: the function's code is imported by the worker."""

    async def invoke(self, fn: Any, request: ExecutionRequest) -> ExecutionResult:
        assert isinstance(fn, Function), "the in-process invoker runs functions the worker imported"
        return await execute(fn, request)
