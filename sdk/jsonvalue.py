"""Checks that a value survives the JSON wire and msgpack storage unchanged."""

from __future__ import annotations

import json
import math
import re
from typing import Any

JSON = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
#: Deepest nesting of objects and lists ``check_json`` accepts by default. Far below Python's
#: recursion limit, so that the check itself, msgpack, JSON encoders and CEL never hit it.
MAX_DEPTH = 256
#: Keys shown as ``.key`` in a path; any other key is quoted, ``["a.b"]``.
_PLAIN_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]*\Z")
#: Longest key quoted in a path, so that an error message stays short.
_SHOWN_KEY_CHARS = 64


class NotJSONError(TypeError):
    """A value is not JSON-compatible; ``path`` says where (``data.items[2]``)."""

    def __init__(self, path: str, reason: str) -> None:
        # A path through deep nesting can be long: the message keeps both ends of it.
        shown = path if len(path) <= 240 else f"{path[:160]}...{path[-60:]}"
        super().__init__(f"{shown}: {reason}")
        self.path = path
        self.reason = reason


def child_path(path: str, key: str) -> str:
    """``path.key``, or ``path["odd key"]`` for a key that is not a plain name.

    The quoted form is ASCII (``json.dumps`` escapes), so a path is always safe to log or to put in a
    JSON answer, whatever the key holds (a lone surrogate, a newline...).
    """
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    shown = json.dumps(key[:_SHOWN_KEY_CHARS]) + ("..." if len(key) > _SHOWN_KEY_CHARS else "")
    return f"{path}[{shown}]"


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as UTF-8 (a lone surrogate, e.g. from JSON's ``"\\ud800"``), or None."""
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"contains an unpaired surrogate (U+{ord(value[exc.start]):04X}) at index {exc.start}; "
            "text must be valid Unicode"
        )
    return None


def check_json(value: Any, path: str = "value", *, max_depth: int = MAX_DEPTH) -> JSON:
    """Return ``value`` with tuples as lists, or raise NotJSONError naming the first bad part.

    Refused: types JSON has no form for, non-string keys, integers outside 64 bits, NaN and
    infinities, strings that are not valid Unicode (lone surrogates), and objects or lists nested
    more than ``max_depth`` levels.
    """
    return _check(value, path, 0, max_depth)


def _check(value: Any, path: str, depth: int, limit: int) -> JSON:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            raise NotJSONError(path, f"string {problem}")
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise NotJSONError(path, f"integer of {len(str(abs(value)))} digits does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJSONError(path, f"float {value!r} is not valid JSON")
        return value
    if isinstance(value, dict | list | tuple) and depth >= limit:
        raise NotJSONError(path, f"nested too deeply: objects and lists may nest at most {limit} levels")
    if isinstance(value, dict):
        out: dict[str, JSON] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotJSONError(path, f"dict key {key!r} is a {type(key).__name__}, JSON keys are strings")
            problem = text_problem(key)
            if problem is not None:
                raise NotJSONError(child_path(path, key), f"key {problem}")
            out[key] = _check(item, child_path(path, key), depth + 1, limit)
        return out
    if isinstance(value, list | tuple):
        items: list[JSON] = []
        for i, item in enumerate(value):  # a loop, not a comprehension: one stack frame per level
            items.append(_check(item, f"{path}[{i}]", depth + 1, limit))
        return items
    raise NotJSONError(
        path, f"{type(value).__name__} is not JSON-compatible (use dict, list, str, int, float, bool or None)"
    )


def json_type(value: Any) -> str:
    """What a decoded JSON value is, for error messages: "null", "a boolean", "a number", "a string",
    "a list", "an object" (else the Python type's name)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def shown(value: Any) -> str:
    """A bad value for an error message: its repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
