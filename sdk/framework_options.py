"""The options of inngest-py's framework ``serve`` functions that stepq's handler does not have.

``stepq.fast_api.serve`` and ``stepq.flask.serve`` take inngest-py's signature. An option whose
value asks for what stepq does anyway is accepted; any other value is refused, never ignored.
"""

from __future__ import annotations

from .errors import FunctionConfigError


def refuse_unsupported(
    where: str, *, enable_unauthed_sync: bool | None, public_path: str | None, streaming: object | None = None
) -> None:
    """Raise ``FunctionConfigError`` naming each option stepq cannot honour, and why."""
    reasons = []
    if enable_unauthed_sync is False:
        reasons.append("enable_unauthed_sync=False: stepq's handler syncs on any PUT (the app calls the API)")
    if public_path is not None:
        reasons.append("public_path: the URL registered on sync ends with serve_path; a proxy must keep that path")
    if streaming is not None and getattr(streaming, "value", streaming) != "disable":
        reasons.append("streaming: stepq answers each call when the function returns; it sends no keepalive bytes")
    if reasons:
        raise FunctionConfigError(f"{where}: not supported by stepq: {'; '.join(reasons)}")
