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

Preparing and indexing waits' expressions is the runtime's (``stepq.runtime.wait_expressions``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

from .cel_tokens import Token, tokenize
from .errors import FunctionConfigError, StepqError

__all__ = [
    "Bindings",
    "Expression",
    "ExpressionError",
    "ExpressionEvalError",
    "compile_expression",
]

#: Identifiers CEL resolves by itself (type denotations); not variables a caller has to provide.
_BUILTIN_IDENTIFIERS = frozenset(
    {"bool", "bytes", "double", "dyn", "int", "list", "map", "null_type", "string", "type", "uint"}
)
#: Macros that bind a variable: ``list.exists(x, x > 1)``.
_BINDING_MACROS = frozenset({"all", "exists", "exists_one", "existsOne", "map", "filter", "transformList", "sortBy"})
_MACRO_CALL = re.compile(r"\.\s*(?:" + "|".join(sorted(_BINDING_MACROS)) + r")\s*\(")
_CACHE_SIZE = 4096


class ExpressionError(FunctionConfigError):
    """An expression is invalid: a syntax error, or a variable that is not available there."""


class ExpressionEvalError(StepqError):
    """Evaluating an expression failed (only :meth:`Expression.evaluate` raises it)."""


def _cel() -> ModuleType:
    # Imported on first use: the package's __init__ also loads its shell (rich, prompt_toolkit),
    # about 0.17 s that a process sending events never needs.
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

    Raises :class:`ExpressionError` (a :class:`~stepq.errors.FunctionConfigError`) naming the
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
    bound = _macro_variables(tokenize(text)) if _MACRO_CALL.search(text) else set()
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


def _macro_variables(tokens: list[Token]) -> set[str]:
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
