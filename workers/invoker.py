"""How a worker calls a function: in-process here; over HTTP for served apps."""

from __future__ import annotations

from typing import Protocol

from sdk.engine import ExecutionRequest, ExecutionResult, execute
from sdk.function import Function


class Invoker(Protocol):
    async def invoke(self, fn: Function, request: ExecutionRequest) -> ExecutionResult: ...


class InProcessInvoker:
    """Runs the engine in this process: the function's code is imported by the worker."""

    async def invoke(self, fn: Function, request: ExecutionRequest) -> ExecutionResult:
        return await execute(fn, request)
