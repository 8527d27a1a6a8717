"""Checks that a value survives the JSON wire and msgpack storage unchanged."""

from __future__ import annotations

import math
from typing import Any

JSON = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class NotJSONError(TypeError):
    """A value is not JSON-compatible; ``path`` says where (``data.items[2]``)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def check_json(value: Any, path: str = "value") -> JSON:
    """Return ``value`` with tuples as lists, or raise NotJSONError naming the first bad part."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise NotJSONError(path, f"integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJSONError(path, f"float {value!r} is not valid JSON")
        return value
    if isinstance(value, dict):
        out: dict[str, JSON] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotJSONError(path, f"dict key {key!r} is a {type(key).__name__}, JSON keys are strings")
            out[key] = check_json(item, f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [check_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise NotJSONError(
        path, f"{type(value).__name__} is not JSON-compatible (use dict, list, str, int, float, bool or None)"
    )
