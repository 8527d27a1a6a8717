"""The serve protocol's core, independent of ASGI/WSGI: one request in, one answer out.

It checks the request's signature (production mode), sends POST/PUT/GET to their modules
(``run``, ``sync``, ``introspection``), and gives every answer the SDK's headers and, when the
request was signed, a signature of its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog

from ..client import Client
from ..errors import FunctionConfigError
from ..function import Function
from ..signing import SIGNATURE_HEADER, SignatureError, matching_key, sign
from .api_client import ApiClient
from .introspection import answer_introspection
from .messages import REQUEST_VERSION, SDK_NAME, HandlerRequest, HandlerResponse, Refusal, dumps
from .run import answer_call
from .served_functions import ServedFunctions
from .settings import ServeSettings
from .sync import answer_sync

log = structlog.get_logger("stepq.serve")


class ServeHandler:
    """The protocol, independent of ASGI/WSGI: ``await handler.handle(request)`` -> response."""

    def __init__(self, client: Client, functions: Sequence[Function] | None, settings: ServeSettings) -> None:
        if not isinstance(client, Client):
            raise FunctionConfigError(f"serve: expected a stepq.Inngest (or stepq.Client), got {type(client).__name__}")
        self.client = client
        self.settings = settings
        self.functions = ServedFunctions(client, functions)
        self.api = ApiClient(settings)

    def base_headers(self) -> dict[str, str]:
        """The headers of every answer."""
        return {
            "Content-Type": "application/json",
            "X-Inngest-SDK": SDK_NAME,
            "X-Inngest-Req-Version": REQUEST_VERSION,
            "X-Inngest-Framework": self.settings.framework,
        }

    async def handle(self, request: HandlerRequest) -> HandlerResponse:
        """Answer one request; never raises."""
        validated: str | None = None
        try:
            validated = self._validated_key(request)
            if request.method == "POST":
                response = await answer_call(self.functions, self.api, request)
            elif request.method == "PUT":
                response = await answer_sync(self.settings, self.functions, self.api, request)
            elif request.method in ("GET", "HEAD"):
                response = answer_introspection(self.settings, self.functions, request, validated)
            else:
                response = _refused(
                    Refusal(405, "method_not_allowed", f"{request.method} is not supported; use GET, POST or PUT")
                )
                response.headers["Allow"] = "GET, POST, PUT"
        except Refusal as refusal:
            response = _refused(refusal)
        except Exception as exc:  # a bug in the handler: log it in full, answer without the traceback
            log.exception("serve.internal_error", method=request.method, error=repr(exc))
            response = _refused(
                Refusal(500, "internal_error", f"stepq's serve handler failed: {type(exc).__name__}: {exc}")
            )
        response.headers = {**self.base_headers(), **response.headers}
        if validated is not None:
            response.headers[SIGNATURE_HEADER] = sign(response.body, validated, int(time.time()))
        if request.method == "HEAD":
            response.body = b""
        return response

    def _validated_key(self, request: HandlerRequest) -> str | None:
        """The signing key that signed the request, or None (dev mode, or no valid signature).

        POST needs one in production mode: missing or bad signatures answer 401 there.
        """
        if self.settings.dev:
            return None
        header = request.headers.get(SIGNATURE_HEADER.lower())
        try:
            return matching_key(request.body, header, self.settings.signing_keys, int(time.time()))
        except SignatureError as exc:
            if request.method == "POST":
                log.warning("serve.unauthorized", reason=exc.reason, error=exc.message)
                raise Refusal(401, "unauthorized", f"Unauthorized: {exc.message}", name="UnauthorizedError") from None
            return None


def _refused(refusal: Refusal) -> HandlerResponse:
    body = refusal.body or {"name": refusal.name, "message": refusal.message, "code": refusal.code}
    headers = {}
    if refusal.status >= 500:
        headers["X-Inngest-No-Retry"] = "false"
    return HandlerResponse(refusal.status, dumps(body), headers)
