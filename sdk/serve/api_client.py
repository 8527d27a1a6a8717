"""The app's calls to the stepq API (Inngest's ``/fn/register`` and ``/v0/runs``): authorized with
the hashed signing key in production mode, tried again with the fallback key on 401/403."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx

from ..signing import hash_signing_key
from .messages import REQUEST_VERSION, SDK_NAME, Refusal
from .settings import ServeSettings

#: Timeout of calls to the API (sync, ``use_api`` reads).
API_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


def snippet(response: httpx.Response) -> str:
    """The start of an answer's body, for error messages."""
    text = response.text.strip()
    return (text[:300] + "...") if len(text) > 300 else (text or "(empty body)")


class ApiClient:
    """Calls the API at ``settings.api_base_url``; one short-lived HTTP client per operation."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings

    async def send(self, http_client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """A call to the API, authorized in production mode; retried with the fallback key on 401/403."""
        headers = {
            "X-Inngest-SDK": SDK_NAME,
            "X-Inngest-Req-Version": REQUEST_VERSION,
            "User-Agent": SDK_NAME,
            **kwargs.pop("headers", {}),
        }
        if self.settings.inngest_env:
            headers["X-Inngest-Env"] = self.settings.inngest_env
        keys = [] if self.settings.dev else [k for k in self.settings.signing_keys if k]
        if keys:
            headers["Authorization"] = f"Bearer {hash_signing_key(keys[0])}"
        response = await http_client.request(method, url, headers=headers, **kwargs)
        if response.status_code in (401, 403) and len(keys) > 1:
            headers["Authorization"] = f"Bearer {hash_signing_key(keys[1])}"
            response = await http_client.request(method, url, headers=headers, **kwargs)
        return response

    async def register(self, body: bytes, params: dict[str, str] | None, headers: dict[str, str]) -> httpx.Response:
        """POST a sync payload to ``/fn/register``; raises httpx.HTTPError when the API is unreachable."""
        async with httpx.AsyncClient(timeout=API_TIMEOUT) as http_client:
            return await self.send(http_client, "POST", self.register_url, content=body, params=params, headers=headers)

    @property
    def register_url(self) -> str:
        return f"{self.settings.api_base_url}/fn/register"

    async def run_state(self, run_id: str) -> tuple[list[Any], dict[str, Any]]:
        """The run's events and memo, for a call that said ``use_api``; a Refusal says what failed."""
        base = f"{self.settings.api_base_url}/v0/runs/{quote(run_id, safe='')}"
        try:
            async with httpx.AsyncClient(timeout=API_TIMEOUT) as http_client:
                batch, actions = await asyncio.gather(
                    self._get_json(http_client, f"{base}/batch"), self._get_json(http_client, f"{base}/actions")
                )
        except httpx.HTTPError as exc:
            raise Refusal(
                500, "use_api_failed", f"could not fetch run {run_id}'s state from the API at {base}: {exc!r}"
            ) from None
        if not isinstance(batch, list) or not batch:
            raise Refusal(500, "use_api_failed", f"the API at {base}/batch answered no events for run {run_id}")
        if not isinstance(actions, dict):
            raise Refusal(500, "use_api_failed", f"the API at {base}/actions did not answer an object")
        return batch, actions

    async def _get_json(self, http_client: httpx.AsyncClient, url: str) -> Any:
        response = await self.send(http_client, "GET", url)
        if response.status_code >= 400:
            raise Refusal(
                500, "use_api_failed", f"the API answered {response.status_code} to GET {url}: {snippet(response)}"
            )
        try:
            return response.json()
        except ValueError:
            raise Refusal(500, "use_api_failed", f"the API answered GET {url} with a body that is not JSON") from None
