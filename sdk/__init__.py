"""stepq's SDK: define durable functions made of steps, and send the events that start them.

Shaped after the Inngest Python SDK, so ``import sdk as inngest`` carries Inngest code over.
"""

from sdk.client import Client
from sdk.context import Context, ContextSync
from sdk.durations import to_timedelta
from sdk.engine import (
    ExecutionRequest,
    ExecutionResult,
    FunctionFailed,
    FunctionReturned,
    StepsReported,
    execute,
)
from sdk.errors import (
    FunctionConfigError,
    InvalidEventError,
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    StepOutputError,
    StepqError,
)
from sdk.event import Event
from sdk.function import Function
from sdk.opcodes import Op, Opcode, hash_step_id
from sdk.retry import Backoff
from sdk.serve import serve as serve
from sdk.triggers import TriggerCron, TriggerEvent

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
    "NonDeterminismError",
    "NonRetriableError",
    "Op",
    "Opcode",
    "RetryAfterError",
    "StepError",
    "StepOutputError",
    "StepqError",
    "StepsReported",
    "TriggerCron",
    "TriggerEvent",
    "execute",
    "hash_step_id",
    "to_timedelta",
]
