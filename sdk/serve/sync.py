"""``PUT``: sync the app, posting the served functions' configs to the API's ``/fn/register``
(protocol §4.2) and answering ``{"message", "modified"}`` (500 with the API's error)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import structlog

from ..function import Function
from .api_client import ApiClient, snippet
from .messages import CAPABILITIES, SDK_NAME, HandlerRequest, HandlerResponse, Refusal, dumps
from .run import DISCOVERY_STEP
from .served_functions import ServedFunctions
from .settings import ServeSettings

log = structlog.get_logger("stepq.serve")


def app_url(settings: ServeSettings, request: HandlerRequest) -> str:
    """The URL the executor calls: the serve origin (or the request's) and the serve path."""
    return (settings.serve_origin or request.origin) + settings.serve_path


def register_payload(settings: ServeSettings, functions: ServedFunctions, url: str) -> dict[str, Any]:
    """Inngest's sync payload (protocol §4.2) for the served functions at ``url``."""
    served = functions.by_slug()
    if not served:
        raise Refusal(500, "no_functions", f"app {functions.client.app_id!r} serves no functions")
    return {
        "url": url,
        "v": "0.1",
        "deployType": "ping",
        "sdk": SDK_NAME,
        "framework": settings.framework,
        "appName": functions.client.app_id,
        "capabilities": dict(CAPABILITIES),
        "functions": [_function_config(fn, url) for fn in served.values()],
    }


def _function_config(fn: Function, url: str) -> dict[str, Any]:
    config = fn.config()
    fn_id = quote(fn.slug, safe="-_.:~")
    out: dict[str, Any] = {
        "id": fn.slug,
        "name": fn.name,
        "triggers": config["triggers"],
        "steps": {
            "step": {
                "id": DISCOVERY_STEP,
                "name": DISCOVERY_STEP,
                "runtime": {"type": "http", "url": f"{url}?fnId={fn_id}&stepId={DISCOVERY_STEP}"},
                "retries": {"attempts": fn.retries},
            }
        },
        # stepq's own extension (Inngest ignores it): the wait between attempts.
        "backoff": config["backoff"],
    }
    if config["cancel"]:
        out["cancel"] = config["cancel"]
    if config["timeouts"]:
        out["timeouts"] = config["timeouts"]
    return out


def _failed(message: str) -> HandlerResponse:
    log.error("serve.sync_failed", error=message)
    return HandlerResponse(500, dumps({"message": message, "modified": False}))


async def answer_sync(
    settings: ServeSettings, functions: ServedFunctions, api: ApiClient, request: HandlerRequest
) -> HandlerResponse:
    """Answer a PUT: register the app's functions with the API."""
    kind = request.headers.get("x-inngest-server-kind")
    if kind in ("dev", "cloud") and kind != settings.mode:
        message = f"sync refused: it comes from a {kind} server but this app runs in {settings.mode} mode"
        log.error("serve.sync_refused", reason=message)
        return HandlerResponse(400, dumps({"message": message, "modified": False, "code": "server_kind_mismatch"}))
    if request.path and (request.path.rstrip("/") or "/") != settings.serve_path:
        log.warning(
            "serve.path_mismatch",
            serve_path=settings.serve_path,
            request_path=request.path,
            hint="the URL registered uses serve_path: pass serve_path= where the app is mounted",
        )
    url = app_url(settings, request)
    try:
        payload = register_payload(settings, functions, url)
    except Refusal as refusal:
        return HandlerResponse(500, dumps({"message": refusal.message, "modified": False}))
    params = {"deployId": request.query["deployId"]} if request.query.get("deployId") else None
    headers = {"Content-Type": "application/json", "X-Inngest-Framework": settings.framework}
    if kind in ("dev", "cloud"):
        headers["X-Inngest-Expected-Server-Kind"] = kind
    try:
        response = await api.register(dumps(payload), params, headers)
    except httpx.HTTPError as exc:
        return _failed(f"could not reach the API at {api.register_url}: {exc!r}")
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code >= 400 or not isinstance(answer, dict):
        detail = answer.get("error") if isinstance(answer, dict) else None
        return _failed(
            f"the API at {api.register_url} refused the sync ({response.status_code}): "
            f"{detail if isinstance(detail, str) and detail else snippet(response)}"
        )
    modified = bool(answer.get("modified"))
    log.info(
        "serve.synced", app=functions.client.app_id, url=url, functions=len(payload["functions"]), modified=modified
    )
    return HandlerResponse(200, dumps({"message": "Successfully registered", "modified": modified}))
