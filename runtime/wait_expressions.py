"""A wait's expression, prepared for storage and lookup, as Inngest does when it stores a pause.

- :func:`interpolate` writes a run's trigger event into the expression, so only ``async.*`` is left.
- :func:`equality_key` finds the ``async.<path> == <literal>`` clause that lets waits be indexed by
  (event name, path, value); :func:`index_token` and :func:`index_token_at` give the canonical
  form of a value, the same on both sides of that index (``stepq.runtime.waits``).
- :func:`to_literal` writes a JSON value as a CEL literal.

Pure (no I/O); built on the CEL tokens of ``stepq.cel_tokens`` and the SDK's compiler.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from stepq.cel_tokens import TRIPLE_DOUBLE, TRIPLE_SINGLE, Token, string_prefix, tokenize
from stepq.expressions import ExpressionError, ExpressionEvalError, compile_expression

JSONScalar = str | int | float | bool | None

#: The variables of a wait's expression once interpolated: the candidate event is ``async``.
WAIT_VARIABLES = frozenset({"async", "event"})
_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


# --------------------------------------------------------------------------------------------
# Literals


def to_literal(value: Any) -> str | None:
    """The CEL literal for a JSON value (``'pro'`` → ``"pro"``), or None if CEL cannot hold it.

    Integers beyond uint64 become doubles and non-finite floats ``double("NaN")`` and the like,
    as the CEL engine converts them; strings that are not valid Unicode, and non-JSON types, have
    no literal.
    """
    try:
        return _literal(value)
    except RecursionError:
        return None


def _literal(value: Any) -> str | None:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return str(value) if value >= 0 else f"({value})"
        if _INT64_MAX < value <= _UINT64_MAX:
            return f"{value}u"
        try:
            return _literal(float(value))
        except OverflowError:
            return None
    if isinstance(value, float):
        if math.isnan(value):
            return 'double("NaN")'
        if math.isinf(value):
            return 'double("Infinity")' if value > 0 else 'double("-Infinity")'
        text = repr(value)
        return f"({text})" if text.startswith("-") else text
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None
        # JSON's escapes (\" \\ \n \r \t \b \f \uXXXX) are all CEL escapes too.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bytes | bytearray):
        return 'b"' + "".join(f"\\x{b:02x}" for b in value) + '"'
    if isinstance(value, list | tuple):
        items = []
        for item in value:
            item_text = _literal(item)
            if item_text is None:
                return None
            items.append(item_text)
        return "[" + ", ".join(items) + "]"
    if isinstance(value, dict):
        entries = []
        for key, item in value.items():
            if not isinstance(key, str | int | bool):
                return None
            key_text, item_text = _literal(key), _literal(item)
            if key_text is None or item_text is None:
                return None
            entries.append(f"{key_text}: {item_text}")
        return "{" + ", ".join(entries) + "}"
    return None


def _literal_value(tokens: list[Token]) -> tuple[bool, Any]:
    """(True, value) when ``tokens`` are exactly one scalar literal, possibly negated."""
    negative = len(tokens) == 2 and tokens[0].text == "-"
    if negative:
        tokens = tokens[1:]
    if len(tokens) != 1:
        return False, None
    token = tokens[0]
    if token.kind == "ident" and not negative:
        if token.text in ("true", "false"):
            return True, token.text == "true"
        if token.text == "null":
            return True, None
        return False, None
    if token.kind == "number":
        text = token.text
        if text[-1] in "uU":
            if negative:
                return False, None
            text = text[:-1]
        if text[:2] in ("0x", "0X"):
            value: Any = int(text, 16)
        elif any(c in text for c in ".eE"):
            value = float(text)
        else:
            value = int(text)
        return True, -value if negative else value
    if token.kind == "string" and not negative and "b" not in string_prefix(token.text):
        text = token.text
        if text[0] in "'\"" and text[:3] not in (TRIPLE_SINGLE, TRIPLE_DOUBLE) and "\\" not in text:
            return True, text[1:-1]  # the common case: no escapes to decode
        try:
            value = compile_expression(token.text, variables=()).evaluate()
        except (ExpressionError, ExpressionEvalError):
            return False, None
        return (True, value) if isinstance(value, str) else (False, None)
    return False, None


# --------------------------------------------------------------------------------------------
# Interpolation


_MISSING: Any = object()


def interpolate(expr_text: str, event: Mapping[str, Any]) -> str:
    """Write the values of ``event.<path>`` references into the expression as CEL literals.

    ``"async.data.id == event.data.id"`` with ``event = {"data": {"id": "r1"}}`` becomes
    ``'async.data.id == "r1"'``. ``has(event.data.x)`` becomes ``true`` or ``false``. A path the
    event does not have, or a value CEL cannot hold, is left as it was: evaluating it fails and so
    the expression does not match there, exactly as before interpolation. So compile the result
    with the variables ``{"event", "async"}``. Field access continues after a value
    (``event.data.name.startsWith("a")`` → ``"abc".startsWith("a")``); an index that is not a
    literal (``event.data.items[async.data.i]``) stops the path before it. Text in strings and
    comments is never touched; an expression without references comes back unchanged.
    """
    if "event" not in expr_text:
        return expr_text
    tokens = tokenize(expr_text)
    out: list[str] = []
    copied = 0  # expr_text[:copied] is in out
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not _is_event_reference(tokens, i):
            i += 1
            continue
        segments, end = _path(tokens, i + 1)
        start_char, end_char = token.start, tokens[end - 1].end
        replacement: str | None = None
        in_has = (
            i >= 2
            and tokens[i - 1].text == "("
            and tokens[i - 2].text == "has"
            and (i < 3 or tokens[i - 3].text != ".")
            and end < len(tokens)
            and tokens[end].text == ")"
            and segments
            and isinstance(segments[-1], str)
            and tokens[end - 2].text == "."
        )
        if in_has:
            parent = _resolve(event, segments[:-1])
            if isinstance(parent, Mapping):
                replacement = "true" if segments[-1] in parent else "false"
                start_char, end_char = tokens[i - 2].start, tokens[end].end
        else:
            value = _resolve(event, segments)
            if value is not _MISSING:
                replacement = to_literal(value)
        if replacement is not None:
            out.append(expr_text[copied:start_char])
            out.append(replacement)
            copied = end_char
        i = end
    out.append(expr_text[copied:])
    return "".join(out)


def _is_event_reference(tokens: list[Token], i: int) -> bool:
    token = tokens[i]
    if token.kind != "ident" or token.text != "event":
        return False
    if i > 0 and tokens[i - 1].text == ".":
        return False  # a field named event: async.event
    return not (i + 1 < len(tokens) and tokens[i + 1].text == "(")  # a function named event


def _path(tokens: list[Token], i: int) -> tuple[list[str | int], int]:
    """The field and index segments from ``tokens[i]`` on, and the index of the token after them."""
    segments: list[str | int] = []
    n = len(tokens)
    while i < n:
        if tokens[i].text == "." and i + 1 < n and tokens[i + 1].kind == "ident":
            if i + 2 < n and tokens[i + 2].text == "(":
                break  # a method call on the value
            segments.append(tokens[i + 1].text)
            i += 2
            continue
        if tokens[i].text == "[":
            close = next((j for j in range(i + 1, min(i + 4, n)) if tokens[j].text == "]"), None)
            if close is None:
                break
            ok, key = _literal_value(tokens[i + 1 : close])
            if not ok or isinstance(key, bool) or not isinstance(key, str | int):
                break
            segments.append(key)
            i = close + 1
            continue
        break
    return segments, i


def _resolve(value: Any, segments: list[str | int]) -> Any:
    for segment in segments:
        if isinstance(value, Mapping):
            if segment not in value:
                return _MISSING
            value = value[segment]
        elif isinstance(value, list | tuple) and isinstance(segment, int) and 0 <= segment < len(value):
            value = value[segment]
        else:
            return _MISSING
    return value


# --------------------------------------------------------------------------------------------
# Indexing waits by equality


def equality_key(expr_text: str) -> tuple[str, JSONScalar] | None:
    """The ``(path, value)`` of an ``async.<path> == <literal>`` clause, or None.

    Recognises the comparison alone, reversed (``"pro" == async.data.plan``), in parentheses, or as
    one clause of a top-level ``&&`` chain. In each case every event the expression matches has
    ``value`` at ``path``: candidates for a wait can be looked up by ``index_token(value)`` under
    ``path`` (see :func:`index_token_at`). The caller still evaluates the whole expression on those
    candidates (about 1 µs each), since other clauses may reject them. With ``||``, ``?:``,
    negation or no such clause, returns None: the wait cannot be indexed this way.

    ``path`` is relative to the event, dotted (``"data.request_id"``); only identifier segments
    are recognised. ``value`` is canonical: a whole float is returned as an int (``1.0`` → ``1``)
    since CEL's ``1 == 1.0``. When several clauses qualify, a string comparison is preferred over a
    number, a number over ``true``/``false``/``null``.
    """
    if not isinstance(expr_text, str) or "async" not in expr_text:
        return None
    try:
        compile_expression(expr_text, variables=WAIT_VARIABLES)
    except ExpressionError:
        return None
    tokens = tokenize(expr_text)
    if any(t.kind == "other" for t in tokens):
        return None
    best: tuple[int, str, JSONScalar] | None = None
    for clause in _conjuncts(tokens):
        found = _comparison(clause)
        if found is None:
            continue
        path, value = found
        rank = 2 if value is None or isinstance(value, bool) else 0 if isinstance(value, str) else 1
        if best is None or rank < best[0]:
            best = (rank, path, value)
    return None if best is None else (best[1], best[2])


def _conjuncts(tokens: list[Token]) -> list[list[Token]]:
    """The clauses of a top-level ``&&`` chain (parentheses flattened); one clause if there is none."""
    tokens = _strip_parens(tokens)
    if any(t.text in ("||", "?") for t in _top_level(tokens)):
        return [tokens]
    parts: list[list[Token]] = [[]]
    depth = 0
    for token in tokens:
        if token.text in "([{" and token.kind == "op":
            depth += 1
        elif token.text in ")]}" and token.kind == "op":
            depth -= 1
        if depth == 0 and token.text == "&&":
            parts.append([])
        else:
            parts[-1].append(token)
    if len(parts) == 1:
        return parts
    out: list[list[Token]] = []
    for part in parts:
        out.extend(_conjuncts(part))
    return out


def _top_level(tokens: list[Token]) -> list[Token]:
    out = []
    depth = 0
    for token in tokens:
        if token.kind == "op" and token.text in "([{":
            depth += 1
        elif token.kind == "op" and token.text in ")]}":
            depth -= 1
        elif depth == 0:
            out.append(token)
    return out


def _strip_parens(tokens: list[Token]) -> list[Token]:
    while len(tokens) >= 2 and tokens[0].text == "(" and tokens[-1].text == ")":
        depth = 0
        for k, token in enumerate(tokens):
            if token.kind == "op" and token.text in "([{":
                depth += 1
            elif token.kind == "op" and token.text in ")]}":
                depth -= 1
            if depth == 0 and k < len(tokens) - 1:
                return tokens  # the first parenthesis closes before the end: (a) == (b)
        tokens = tokens[1:-1]
    return tokens


def _comparison(clause: list[Token]) -> tuple[str, JSONScalar] | None:
    if sum(1 for t in clause if t.text == "==") != 1:
        return None
    at = next(k for k, t in enumerate(clause) if t.text == "==")
    left, right = clause[:at], clause[at + 1 :]
    for side, other in ((left, right), (right, left)):
        path = _async_path(_strip_parens(side))
        if path is None:
            continue
        ok, value = _literal_value(_strip_parens(other))
        if not ok:
            continue
        canonical = _canonical(value)
        if canonical is _MISSING:
            return None
        return path, canonical
    return None


def _async_path(tokens: list[Token]) -> str | None:
    """``data.id`` for the tokens of ``async.data.id`` (identifier segments only), else None."""
    if len(tokens) < 3 or len(tokens) % 2 == 0 or tokens[0].text != "async":
        return None
    names = []
    for k in range(1, len(tokens), 2):
        if tokens[k].text != "." or tokens[k + 1].kind != "ident":
            return None
        names.append(tokens[k + 1].text)
    return ".".join(names)


def _canonical(value: Any) -> Any:
    """One representative per CEL-equal scalar: whole floats as ints; NaN (equal to nothing) missing."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return _MISSING
        if math.isfinite(value) and value.is_integer():
            return int(value)
        return value
    return _MISSING


def index_token(value: Any) -> str | None:
    """The canonical string of a scalar for an equality index, or None if it cannot be indexed.

    CEL-equal scalars get the same token (``1``, ``1.0`` → ``"1"``) and CEL-unequal ones differ
    (``true`` → ``"true"`` but ``1`` → ``"1"``; ``"1"`` → ``'"1"'``). Lists, maps and NaN give None.
    """
    canonical = _canonical(value)
    if canonical is _MISSING:
        return None
    if isinstance(canonical, str):
        return json.dumps(canonical, ensure_ascii=False)
    if isinstance(canonical, float):
        return repr(canonical)
    return json.dumps(canonical)


def index_token_at(event: Mapping[str, Any], path: str) -> str | None:
    """:func:`index_token` of the value at a dotted ``path`` of ``event``; None if it is missing."""
    value = _resolve(event, list(path.split(".")))
    if value is _MISSING:
        return None
    return index_token(value)
