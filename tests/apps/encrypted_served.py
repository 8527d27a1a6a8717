"""``tests.apps.encrypted`` served over HTTP by ``stepq.serve``, under uvicorn at ``/api/inngest``.

Its keys come from ``STEPQ_ENCRYPTION_KEYS``; its sends go to the event API (``STEPQ_EVENT_API_URL``).
"""

from __future__ import annotations

import stepq
from tests.apps import encrypted

app = stepq.serve(encrypted.client)
