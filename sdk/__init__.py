"""stepq's SDK: define durable functions made of steps, and send the events that start them.

Shaped after the Inngest Python SDK, so ``import sdk as inngest`` carries Inngest code over.
"""

from stepq.client import Client
from stepq.context import Context, ContextSync
from stepq.durations import to_timedelta
from stepq.engine import (
    ExecutionResult,
    FunctionFailed,
    FunctionReturned,
    StepsReported,
    execute,
)
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
from stepq.function import Function
from stepq.middleware import Middleware, MiddlewareSync, SendEventsResult, StepMemos, TransformOutputResult
from stepq.opcodes import Op, Opcode, hash_step_id
from stepq.replay import ExecutionRequest
from stepq.retry import Backoff
from stepq.serve import serve as serve
from stepq.triggers import TriggerCron, TriggerEvent

__all__ = [
    "Backoff",
    "Client",
    "Context",
    "ContextSync",
    "Event",
    "ExecutionRequest",
    "ExecutionResult",
    "Function",
    "FunctionConfigError",
    "FunctionFailed",
    "FunctionReturned",
    "InvalidEventError",
    "Middleware",
    "MiddlewareSync",
    "NonDeterminismError",
    "NonRetriableError",
    "Op",
    "Opcode",
    "RetryAfterError",
    "SendEventsResult",
    "StepError",
    "StepMemos",
    "StepOutputError",
    "StepqError",
    "StepsReported",
    "TransformOutputResult",
    "TriggerCron",
    "TriggerEvent",
    "execute",
    "hash_step_id",
    "to_timedelta",
]
