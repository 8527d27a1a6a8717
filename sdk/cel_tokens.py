"""Just enough of CEL's lexical grammar to find identifiers, paths and literals outside strings and
comments, which the CEL engine (``common-expression-language``) does not expose: it compiles and
evaluates, but gives no parse tree. Anything the tokenizer does not know becomes an ``other``
token; the CEL parser stays the judge of validity.

Used to find the names comprehension macros bind (``stepq.expressions``) and to prepare and index
waits' expressions (``stepq.runtime.wait_expressions``).
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    """One token: its kind, its text and where it stands in the expression."""

    kind: str  # "ident", "string", "number", "op", "other"
    text: str
    start: int
    end: int


TRIPLE_SINGLE = "'" * 3  # ''' (spelled out to keep this pattern readable)
TRIPLE_DOUBLE = '"' * 3
TOKEN = re.compile(
    "|".join(
        [
            r"(?P<space>[ \t\n\r\f]+|//[^\n]*)",
            # raw strings (no escapes), then the others; a single-quoted string stays on its line
            r"(?P<string>(?:[rR][bB]?|[bB][rR])(?:"
            + TRIPLE_SINGLE
            + r"[\s\S]*?"
            + TRIPLE_SINGLE
            + "|"
            + TRIPLE_DOUBLE
            + r"[\s\S]*?"
            + TRIPLE_DOUBLE
            + r"""|'[^'\r\n]*'|"[^"\r\n]*")"""
            + r"|[bB]?(?:"
            + TRIPLE_SINGLE
            + r"(?:\\[\s\S]|[^\\])*?"
            + TRIPLE_SINGLE
            + "|"
            + TRIPLE_DOUBLE
            + r"(?:\\[\s\S]|[^\\])*?"
            + TRIPLE_DOUBLE
            + r"""|'(?:\\[^\r\n]|[^'\\\r\n])*'|"(?:\\[^\r\n]|[^"\\\r\n])*"))""",
            r"""(?P<unterminated>[rRbB]{0,2}['"][\s\S]*)""",
            r"(?P<number>0[xX][0-9a-fA-F]+[uU]?|[0-9]+\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+|[0-9]+[uU]?)",
            r"(?P<ident>[A-Za-z_][A-Za-z0-9_]*)",
            r"(?P<op>==|!=|<=|>=|&&|\|\||[()\[\]{}.,:?!<>+\-*/%])",
            r"(?P<other>[\s\S])",
        ]
    )
)


def tokenize(text: str) -> list[Token]:
    """CEL tokens, whitespace and comments dropped. An unterminated string swallows the rest."""
    tokens: list[Token] = []
    for match in TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "space":
            continue
        if kind == "unterminated":
            kind = "other"
        assert kind is not None
        tokens.append(Token(kind, match.group(), match.start(), match.end()))
    return tokens


def string_prefix(text: str) -> str:
    """The lower-cased prefix of a string literal's text: ``""``, ``"r"``, ``"b"``, ``"rb"``..."""
    quote = min((k for k in (text.find("'"), text.find('"')) if k >= 0), default=0)
    return text[:quote].lower()
