"""Outputs that are not JSON (Pydantic models, dataclasses...), converted through a serializer, as
inngest-py's ``Inngest(serializer=...)`` with ``output_type=`` on ``create_function`` and ``step.run``.

A step or function with an ``output_type`` has its return value serialized to JSON before it is
stored, and its stored value deserialized to ``output_type`` when it is read back (a memoized step,
an invoked function's output). Without ``output_type`` values pass unchanged and must be JSON.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from .errors import FunctionConfigError, StepqError


class _NotSet:
    """The default of ``output_type``: nothing was passed."""

    def __repr__(self) -> str:
        return "NOT_SET"


#: ``output_type``'s default: values are stored as they are (JSON).
NOT_SET: Any = _NotSet()


class Serializer(Protocol):
    """inngest-py's serializer protocol: JSON-compatible value <-> Python object of type ``typ``."""

    def serialize(self, obj: object, typ: object) -> object:
        """``obj`` as a JSON-compatible value (dict, list, str, number, bool, None)."""
        ...

    def deserialize(self, obj: object, typ: object) -> object:
        """A JSON-compatible value as an object of type ``typ``."""
        ...


def checked_serializer(value: object) -> Serializer | None:
    """``value`` if it has callable ``serialize`` and ``deserialize`` methods (or is None)."""
    if value is None:
        return None
    if not all(callable(getattr(value, method, None)) for method in ("serialize", "deserialize")):
        raise FunctionConfigError(
            f"Inngest: serializer must have serialize(obj, typ) and deserialize(obj, typ) methods, "
            f"got {type(value).__name__}"
        )
    serializer: Serializer = value  # type: ignore[assignment]
    return serializer


def no_serializer(where: str) -> FunctionConfigError:
    """The error for an ``output_type`` given to a client without a serializer."""
    return FunctionConfigError(
        f"{where}: output_type needs a serializer on the client, e.g. Inngest(..., serializer=PydanticSerializer())"
    )


#: Type adapters kept per type: building one is slow, and each registers the type in Pydantic.
_ADAPTER_CACHE_SIZE = 512


class PydanticSerializer:
    """inngest-py's ``PydanticSerializer``: any type Pydantic validates (models, dataclasses,
    ``list[Model]``...). Needs Pydantic 2 (``pip install 'stepq[pydantic]'``)."""

    def __init__(self) -> None:
        # Imported here, not at the top: Pydantic is an optional dependency of stepq, needed only
        # by apps that build this serializer.
        try:
            import pydantic
        except ImportError as exc:
            raise StepqError("PydanticSerializer needs Pydantic 2: pip install 'stepq[pydantic]'") from exc
        self._type_adapter: Callable[[Any], Any] = pydantic.TypeAdapter
        self._adapters: dict[object, Any] = {}
        self._lock = threading.Lock()

    def _adapter(self, typ: object) -> Any:
        try:
            hash(typ)
        except TypeError:
            return self._type_adapter(typ)
        with self._lock:
            adapter = self._adapters.get(typ)
            if adapter is None:
                if len(self._adapters) >= _ADAPTER_CACHE_SIZE:
                    self._adapters.clear()
                adapter = self._adapters[typ] = self._type_adapter(typ)
            return adapter

    def serialize(self, obj: object, typ: object) -> object:
        """``obj`` dumped to JSON-compatible values by ``typ``'s adapter."""
        return self._adapter(typ).dump_python(obj, mode="json")

    def deserialize(self, obj: object, typ: object) -> object:
        """``obj`` validated into a ``typ``."""
        return self._adapter(typ).validate_python(obj)
