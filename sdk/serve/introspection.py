"""``GET``: describe the app (introspection, protocol §4.3, schema ``2024-05-24``); the details
only for a signed request in production mode."""

from __future__ import annotations

import hashlib
from typing import Any

from ..client import NO_EVENT_KEY
from ..signing import SIGNATURE_HEADER, hash_signing_key
from .messages import CAPABILITIES, SDK_VERSION, HandlerRequest, HandlerResponse, dumps
from .served_functions import ServedFunctions
from .settings import ServeSettings

INTROSPECTION_SCHEMA = "2024-05-24"


def answer_introspection(
    settings: ServeSettings, functions: ServedFunctions, request: HandlerRequest, validated: str | None
) -> HandlerResponse:
    """Answer a GET; 403 to a server of the other kind (dev/cloud)."""
    kind = request.headers.get("x-inngest-server-kind")
    if kind in ("dev", "cloud") and kind != settings.mode:
        return HandlerResponse(403, b"{}")
    return HandlerResponse(200, dumps(introspection(settings, functions, request, validated)))


def introspection(
    settings: ServeSettings, functions: ServedFunctions, request: HandlerRequest, validated: str | None
) -> dict[str, Any]:
    """The introspection body; ``validated`` is the signing key that signed the request, if any."""
    client = functions.client
    has_event_key = bool(client.event_key) and client.event_key != NO_EVENT_KEY
    body: dict[str, Any] = {
        "schema_version": INTROSPECTION_SCHEMA,
        "authentication_succeeded": None,
        "function_count": len(functions.by_slug()),
        "has_event_key": has_event_key,
        "has_signing_key": settings.signing_key is not None,
        "has_signing_key_fallback": settings.signing_key_fallback is not None,
        "mode": settings.mode,
        "capabilities": dict(CAPABILITIES),
    }
    if settings.dev:
        return body
    if validated is None:
        body["authentication_succeeded"] = False if request.headers.get(SIGNATURE_HEADER.lower()) else None
        return body
    body.update(
        authentication_succeeded=True,
        api_origin=settings.api_base_url,
        app_id=client.app_id,
        env=settings.inngest_env,
        event_api_origin=(client.event_api_url or settings.api_base_url).rstrip("/"),
        event_key_hash=hashlib.sha256(client.event_key.encode()).hexdigest() if has_event_key else None,
        framework=settings.framework,
        sdk_language="py",
        sdk_version=SDK_VERSION,
        serve_origin=settings.serve_origin,
        serve_path=settings.serve_path,
        signing_key_hash=hash_signing_key(settings.signing_key) if settings.signing_key else None,
        signing_key_fallback_hash=(
            hash_signing_key(settings.signing_key_fallback) if settings.signing_key_fallback else None
        ),
    )
    return body
