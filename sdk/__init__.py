"""stepq: durable functions made of steps, on Redis, with the Inngest Python SDK's API.

``import stepq as inngest`` carries code written for Inngest over: ``inngest.Inngest(app_id=...)``,
``@client.create_function(...)``, ``inngest.Context``, ``inngest.TriggerEvent``... This module
exports the public API only; the engine's internals live in their submodules (``stepq.engine``,
``stepq.opcodes``).
"""

from stepq.client import Client, Inngest
from stepq.context import Context, ContextSync
from stepq.durations import to_timedelta
from stepq.errors import (
    FunctionConfigError,
    InvalidEventError,
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    StepOutputError,
    StepqError,
)
from stepq.event import Event
from stepq.flow_control import Batch, Concurrency, Debounce, Priority, RateLimit, Singleton, Throttle
from stepq.function import Cancel, Function, Timeouts
from stepq.jsonvalue import JSON
from stepq.middleware import Middleware, MiddlewareSync, SendEventsResult, StepMemos, TransformOutputResult
from stepq.retry import Backoff
from stepq.serializer import PydanticSerializer, Serializer
from stepq.serve import serve, serve_wsgi
from stepq.step import Step, StepSync
from stepq.triggers import TriggerCron, TriggerEvent

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
