"""How a worker calls a function: in-process here; over HTTP for served apps."""

from __future__ import annotations

from typing import Any, Protocol

from stepq.engine import ExecutionResult
from stepq.function import Function
from stepq.invocation import invoke
from stepq.replay import ExecutionRequest


class Invoker(Protocol):
    async def invoke(self, fn: Any, request: ExecutionRequest) -> ExecutionResult: ...


class InProcessInvoker:
    """Runs the engine in this process (with the function's middleware): the worker imported its code."""

    async def invoke(self, fn: Any, request: ExecutionRequest) -> ExecutionResult:
        assert isinstance(fn, Function), "the in-process invoker runs functions the worker imported"
        return await invoke(fn, request)
