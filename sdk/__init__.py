"""stepq: durable functions made of steps, on Redis, with the Inngest Python SDK's API.

``import stepq as inngest`` carries code written for Inngest over: ``inngest.Inngest(app_id=...)``,
``@client.create_function(...)``, ``inngest.Context``, ``inngest.TriggerEvent``... This module
exports the public API only; the engine's internals live in their submodules (``stepq.engine``,
``stepq.opcodes``).
"""

from .client import Client, Inngest
from .context import Context, ContextSync
from .durations import to_timedelta
from .errors import (
    FunctionConfigError,
    InvalidEventError,
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    StepOutputError,
    StepqError,
)
from .event import Event
from .flow_control import Batch, Concurrency, Debounce, Priority, RateLimit, RunConcurrency, Singleton, Throttle
from .function import Cancel, Function, Timeouts
from .jsonvalue import JSON
from .middleware import Middleware, MiddlewareSync, SendEventsResult, StepMemos, TransformOutputResult
from .retry import Backoff
from .serializer import PydanticSerializer, Serializer
from .serve import serve, serve_wsgi
from .step import Step, StepSync
from .triggers import TriggerCron, TriggerEvent

__all__ = [
    "JSON",
    "Backoff",
    "Batch",
    "Cancel",
    "Client",
    "Concurrency",
    "Context",
    "ContextSync",
    "Debounce",
    "Event",
    "Function",
    "FunctionConfigError",
    "Inngest",
    "InvalidEventError",
    "Middleware",
    "MiddlewareSync",
    "NonDeterminismError",
    "NonRetriableError",
    "Priority",
    "PydanticSerializer",
    "RateLimit",
    "RetryAfterError",
    "RunConcurrency",
    "SendEventsResult",
    "Serializer",
    "Singleton",
    "Step",
    "StepError",
    "StepMemos",
    "StepOutputError",
    "StepSync",
    "StepqError",
    "Throttle",
    "Timeouts",
    "TransformOutputResult",
    "TriggerCron",
    "TriggerEvent",
    "serve",
    "serve_wsgi",
    "to_timedelta",
]
