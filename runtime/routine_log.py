"""Whether this process logs stepq's routine lines: a line per event delivered to a wait, per run
cancelled by an event, per outbox message delivered, per run skipped or replaced by flow control.

Those lines come from code that runs in workers and in apps that send events alike. A worker
configures its logging (workers/logs.py) and wants them; an app that only sends events would get
each one on its stdout under structlog's defaults (which print every level), so they are off until
a worker turns them on. stepq's warnings and errors are logged everywhere, and structlog's global
configuration stays the app's own.
"""

from __future__ import annotations

_on = False


def turn_on() -> None:
    """Log the routine lines in this process (a worker does, when it configures its logging)."""
    global _on
    _on = True


def on() -> bool:
    """Whether this process logs the routine lines."""
    return _on
