"""The HTTP request and answer of the serve protocol, independent of the server interface (ASGI or
WSGI), and the SDK's identity headers every answer carries."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

#: The request version this SDK speaks (optimized parallelism: coalesced fan-in).
REQUEST_VERSION = "2"
#: What the app advertises (sync and introspection): no in-band sync, no Connect.
CAPABILITIES = {"trust_probe": "v1"}
#: Bodies over this are refused (413) before parsing; the executor moves big state to ``use_api``.
MAX_BODY_BYTES = 64 * 1024 * 1024


def _version() -> str:
    try:
        return importlib.metadata.version("stepq")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


SDK_VERSION = _version()
SDK_NAME = f"stepq:v{SDK_VERSION}"


@dataclasses.dataclass(slots=True)
class HandlerRequest:
    """One HTTP request, independent of the server interface (ASGI or WSGI)."""

    method: str
    #: The path the request arrived at (mount prefix included).
    path: str
    query: Mapping[str, str]
    #: Header names in lower case.
    headers: Mapping[str, str]
    body: bytes
    #: ``scheme://host[:port]`` the request was addressed to.
    origin: str


@dataclasses.dataclass(slots=True)
class HandlerResponse:
    """One HTTP answer; ``header_list`` adds ``Content-Length``."""

    status: int
    body: bytes
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def header_list(self) -> list[tuple[str, str]]:
        return [*self.headers.items(), ("Content-Length", str(len(self.body)))]


class Refusal(Exception):
    """A request answered with an error before (or instead of) running anything."""

    def __init__(
        self, status: int, code: str, message: str, *, name: str = "", body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.name = name or "".join(part.capitalize() for part in code.split("_")) + "Error"
        self.body = body


def dumps(value: Any) -> bytes:
    """A JSON body: compact, UTF-8, no NaN."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def first_values(query_string: str) -> dict[str, str]:
    """A query string's parameters, each with its first value."""
    return {k: v[0] for k, v in parse_qs(query_string, keep_blank_values=True).items() if v}


def body_too_large(headers: dict[str, str]) -> HandlerResponse:
    """The 413 both adapters answer, before reading a body over ``MAX_BODY_BYTES``."""
    body = dumps({"message": f"request body over {MAX_BODY_BYTES} bytes", "code": "body_too_large"})
    return HandlerResponse(413, body, headers)
