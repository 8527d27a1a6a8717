"""stepq's own SDK served over HTTP: the step-engine test apps (loops, sleeps, retries, parallel), unchanged,
each behind ``stepq.serve(client)`` at ``/<name>/api/inngest`` of one Starlette app under uvicorn.

Dev mode or production mode, and the API to sync with, come from the environment
(``INNGEST_DEV``, ``INNGEST_SIGNING_KEY``, ``INNGEST_BASE_URL``), as in a deployment.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

import stepq
from tests.apps import loops, parallel, retries, sleeps

CLIENTS = {
    "loops": loops.client,
    "sleeps": sleeps.client,
    "retries": retries.client,
    "parallel": parallel.client,
}


def path(name: str) -> str:
    return f"/{name}/api/inngest"


app = Starlette(
    routes=[Route(path(name), stepq.serve(client, serve_path=path(name))) for name, client in CLIENTS.items()]
)
