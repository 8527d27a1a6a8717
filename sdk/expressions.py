"""CEL expressions, as Inngest uses them: trigger filters, ``wait_for_event`` and cancel conditions.

Pure (no I/O). The CEL engine is ``common-expression-language`` (Rust bindings, imported on first
use because its package also loads a command-line shell). Semantics worth knowing:

- An expression matches only when it evaluates to ``true``. A missing field, a type mismatch, a
  division by zero or any other evaluation error is no match, never an exception for the caller.
  So ``event.data.plan != 'pro'`` does not match an event without ``data.plan`` either.
- Numbers compare across int, uint and double (``event.data.n == 3`` holds for ``3.0``), as in
  cel-go, which Inngest runs; ``true == 1`` is false.
- ``async`` is an ordinary identifier in CEL (the candidate event of a wait or cancel rule).

The pieces:

- :func:`compile_expression` checks syntax and top-level variables and caches the result;
  :meth:`Expression.matches` evaluates it.
- :class:`Bindings` converts variables once, for one event tested against many expressions.
- :func:`interpolate` writes a run's trigger event into a wait's expression, so only ``async.*``
  is left (what Inngest does when it stores a pause).
- :func:`equality_key` finds the ``async.<path> == <literal>`` clause that lets waits be indexed by
  (event name, path, value); :func:`index_token` and :func:`index_token_at` give the canonical
  form of a value, the same on both sides of that index.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

from stepq.errors import FunctionConfigError, StepqError

__all__ = [
    "Bindings",
    "Expression",
    "ExpressionError",
    "ExpressionEvalError",
    "JSONScalar",
    "compile_expression",
    "equality_key",
    "index_token",
    "index_token_at",
    "interpolate",
    "to_literal",
]

JSONScalar = str | int | float | bool | None

#: Identifiers CEL resolves by itself (type denotations); not variables a caller has to provide.
_BUILTIN_IDENTIFIERS = frozenset(
    {"bool", "bytes", "double", "dyn", "int", "list", "map", "null_type", "string", "type", "uint"}
)
#: Macros that bind a variable: ``list.exists(x, x > 1)``.
_BINDING_MACROS = frozenset({"all", "exists", "exists_one", "existsOne", "map", "filter", "transformList", "sortBy"})
_MACRO_CALL = re.compile(r"\.\s*(?:" + "|".join(sorted(_BINDING_MACROS)) + r")\s*\(")
_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
_CACHE_SIZE = 4096


class ExpressionError(FunctionConfigError):
    """An expression is invalid: a syntax error, or a variable that is not available there."""


class ExpressionEvalError(StepqError):
    """Evaluating an expression failed (only :meth:`Expression.evaluate` raises it)."""


def _cel() -> ModuleType:
    import cel

    return cel


# --------------------------------------------------------------------------------------------
# Compiling and evaluating


class Bindings:
    """Variables for evaluation, converted to CEL values once and reused.

    Converting an event costs about 10 µs plus time proportional to its size, evaluating a
    compiled expression about 1 µs: when one event is tested against many expressions, build one
    ``Bindings`` and pass it to each :meth:`Expression.matches`.
    """

    __slots__ = ("_context", "_failed", "_values")

    def __init__(self, values: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        self._values: dict[str, Any] = {**(values or {}), **more}
        self._context: Any = None
        self._failed = False

    @property
    def values(self) -> Mapping[str, Any]:
        return self._values

    def context(self) -> Any:
        """The converted CEL context, or None if a value cannot be converted (then nothing matches)."""
        if self._context is None and not self._failed:
            try:
                self._context = _cel().Context(self._values)
            except Exception:
                self._failed = True
        return self._context


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Expression:
    """A compiled CEL expression. Immutable and shared: compiling the same text again is a cache hit."""

    text: str
    #: The variables the expression may use (what it was compiled with).
    variables: frozenset[str]
    #: The top-level variables it does use.
    references: frozenset[str]
    _program: Any = dataclasses.field(repr=False)

    def evaluate(self, bindings: Bindings | Mapping[str, Any] | None = None, /, **variables: Any) -> Any:
        """The expression's value; raises :class:`ExpressionEvalError` when evaluation fails."""
        context = _context(bindings, variables)
        if context is None:
            raise ExpressionEvalError(f"expression {self.text!r}: its variables cannot be converted to CEL values")
        try:
            return self._program.execute(context)
        except Exception as exc:
            raise ExpressionEvalError(f"expression {self.text!r}: {_describe_eval_error(exc)}") from None

    def matches(self, bindings: Bindings | Mapping[str, Any] | None = None, /, **variables: Any) -> bool:
        """True only when the expression evaluates to ``true``; any error or other value is False.

        Variables come as a :class:`Bindings`, a mapping, or keywords (``async`` is a Python keyword,
        so pass it in a mapping: ``expr.matches({"event": e, "async": a})``).
        """
        context = _context(bindings, variables)
        if context is None:
            return False
        try:
            return self._program.execute(context) is True
        except Exception:
            return False


def _context(bindings: Bindings | Mapping[str, Any] | None, variables: Mapping[str, Any]) -> Any:
    if isinstance(bindings, Bindings):
        if variables:
            return Bindings(bindings.values, **variables).context()
        return bindings.context()
    return Bindings(bindings, **variables).context()


def compile_expression(text: str, *, variables: Iterable[str]) -> Expression:
    """Compile ``text``, allowing the top-level ``variables``; cached.

    Raises :class:`ExpressionError` (a :class:`~sdk.errors.FunctionConfigError`) naming the
    expression and the problem: a syntax error (with line and column), an unknown variable, or a
    macro variable that hides one of ``variables``.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"expression {text!r}: expected a string, got {type(text).__name__}")
    return _compile(text, frozenset(variables))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compile(text: str, variables: frozenset[str]) -> Expression:
    if not text.strip():
        raise ExpressionError(f"expression {text!r}: is empty")
    program = _parse(text)
    used = set(program.variables())
    bound = _macro_variables(_tokenize(text)) if _MACRO_CALL.search(text) else set()
    shadowing = sorted(bound & variables)
    if shadowing:
        names = ", ".join(repr(n) for n in shadowing)
        raise ExpressionError(
            f"expression {text!r}: the macro variable {names} hides the variable of the same name; rename it"
        )
    unknown = sorted(used - variables - bound - _BUILTIN_IDENTIFIERS)
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        available = ", ".join(repr(n) for n in sorted(variables)) or "none"
        plural = "s" if len(unknown) > 1 else ""
        raise ExpressionError(f"expression {text!r}: unknown variable{plural} {names} (available here: {available})")
    return Expression(text, variables, frozenset(used & variables), program)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse(text: str) -> Any:
    try:
        return _cel().compile(text)
    except Exception as exc:
        raise ExpressionError(f"expression {text!r}: {_describe_syntax_error(text, exc)}") from None


_CEL_ERROR_AT = re.compile(r"ERROR: <input>:(\d+):(\d+): (?:Syntax error: )?")


def _describe_syntax_error(text: str, exc: Exception) -> str:
    message = str(exc)
    prefix = f"Failed to parse expression '{text}': "
    if message.startswith(prefix):
        message = message[len(prefix) :]
    message = _CEL_ERROR_AT.sub(r"syntax error at line \1, column \2: ", message)
    return message.strip() or f"syntax error ({type(exc).__name__})"


def _describe_eval_error(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no such key: {exc.args[0]!r}" if exc.args else "no such key"
    first = str(exc).split(". ")[0].strip()
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Tokens: just enough of CEL's lexical grammar to find identifiers, paths and literals outside
# strings and comments. Anything it does not know becomes an "other" token; the CEL parser is
# the judge of validity.


@dataclasses.dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "ident", "string", "number", "op", "other"
    text: str
    start: int
    end: int


_Q3 = "'" * 3  # ''' (spelled out to keep this pattern readable)
_D3 = '"' * 3
_TOKEN = re.compile(
    "|".join(
        [
            r"(?P<space>[ \t\n\r\f]+|//[^\n]*)",
            # raw strings (no escapes), then the others; a single-quoted string stays on its line
            r"(?P<string>(?:[rR][bB]?|[bB][rR])(?:"
            + _Q3
            + r"[\s\S]*?"
            + _Q3
            + "|"
            + _D3
            + r"[\s\S]*?"
            + _D3
            + r"""|'[^'\r\n]*'|"[^"\r\n]*")"""
            + r"|[bB]?(?:"
            + _Q3
            + r"(?:\\[\s\S]|[^\\])*?"
            + _Q3
            + "|"
            + _D3
            + r"(?:\\[\s\S]|[^\\])*?"
            + _D3
            + r"""|'(?:\\[^\r\n]|[^'\\\r\n])*'|"(?:\\[^\r\n]|[^"\\\r\n])*"))""",
            r"""(?P<unterminated>[rRbB]{0,2}['"][\s\S]*)""",
            r"(?P<number>0[xX][0-9a-fA-F]+[uU]?|[0-9]+\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+|[0-9]+[uU]?)",
            r"(?P<ident>[A-Za-z_][A-Za-z0-9_]*)",
            r"(?P<op>==|!=|<=|>=|&&|\|\||[()\[\]{}.,:?!<>+\-*/%])",
            r"(?P<other>[\s\S])",
        ]
    )
)


def _tokenize(text: str) -> list[_Token]:
    """CEL tokens, whitespace and comments dropped. An unterminated string swallows the rest."""
    tokens: list[_Token] = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "space":
            continue
        if kind == "unterminated":
            kind = "other"
        assert kind is not None
        tokens.append(_Token(kind, match.group(), match.start(), match.end()))
    return tokens


def _string_prefix(text: str) -> str:
    """The lower-cased prefix of a string literal's text: ``""``, ``"r"``, ``"b"``, ``"rb"``..."""
    quote = min((k for k in (text.find("'"), text.find('"')) if k >= 0), default=0)
    return text[:quote].lower()


def _macro_variables(tokens: list[_Token]) -> set[str]:
    """Names bound by comprehension macros: the ``x`` of ``list.exists(x, x > 1)``."""
    out = set()
    for i in range(1, len(tokens) - 3):
        if (
            tokens[i - 1].text == "."
            and tokens[i].kind == "ident"
            and tokens[i].text in _BINDING_MACROS
            and tokens[i + 1].text == "("
            and tokens[i + 2].kind == "ident"
            and tokens[i + 3].text == ","
        ):
            out.add(tokens[i + 2].text)
    return out


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


def _literal_value(tokens: list[_Token]) -> tuple[bool, Any]:
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
    if token.kind == "string" and not negative and "b" not in _string_prefix(token.text):
        text = token.text
        if text[0] in "'\"" and text[:3] not in (_Q3, _D3) and "\\" not in text:
            return True, text[1:-1]  # the common case: no escapes to decode
        try:
            value = _cel().evaluate(token.text)
        except Exception:
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
    tokens = _tokenize(expr_text)
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


def _is_event_reference(tokens: list[_Token], i: int) -> bool:
    token = tokens[i]
    if token.kind != "ident" or token.text != "event":
        return False
    if i > 0 and tokens[i - 1].text == ".":
        return False  # a field named event: async.event
    return not (i + 1 < len(tokens) and tokens[i + 1].text == "(")  # a function named event


def _path(tokens: list[_Token], i: int) -> tuple[list[str | int], int]:
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
        _parse(expr_text)
    except ExpressionError:
        return None
    tokens = _tokenize(expr_text)
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


def _conjuncts(tokens: list[_Token]) -> list[list[_Token]]:
    """The clauses of a top-level ``&&`` chain (parentheses flattened); one clause if there is none."""
    tokens = _strip_parens(tokens)
    if any(t.text in ("||", "?") for t in _top_level(tokens)):
        return [tokens]
    parts: list[list[_Token]] = [[]]
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
    out: list[list[_Token]] = []
    for part in parts:
        out.extend(_conjuncts(part))
    return out


def _top_level(tokens: list[_Token]) -> list[_Token]:
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


def _strip_parens(tokens: list[_Token]) -> list[_Token]:
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


def _comparison(clause: list[_Token]) -> tuple[str, JSONScalar] | None:
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


def _async_path(tokens: list[_Token]) -> str | None:
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
