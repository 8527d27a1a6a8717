"""``tests.apps.mw_hooks`` served over HTTP by ``stepq.serve``, under uvicorn at ``/api/inngest``."""

from __future__ import annotations

import stepq
from tests.apps import mw_hooks

app = stepq.serve(mw_hooks.client)
