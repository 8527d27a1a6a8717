"""The torture test's interpreter served over HTTP (``stepq.serve``) under uvicorn, for ``stepq worker
--http``: ``torture`` (event ``torture-http/run``) and ``torture-child`` of the app ``t-torture-http``.

The API to sync with comes from ``INNGEST_BASE_URL``; ``step.send_event`` posts to the event API at
``STEPQ_EVENT_API_URL``; the step handlers record their executions in ``STEPQ_REDIS_URL``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

import stepq
from tests.torture.interpreter import define

PATH = "/api/inngest"

client = stepq.Client("t-torture-http")
torture, torture_child = define(client, "torture-http")
app = Starlette(routes=[Route(PATH, stepq.serve(client, serve_path=PATH))])
