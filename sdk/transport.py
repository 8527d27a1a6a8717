"""How ``Client.send`` reaches the runtime, without this package importing it.

Imports flow one way (workers -> runtime -> sdk), so the Redis transport lives in ``runtime`` and is
found through the ``stepq.transports`` entry point that the distribution declares.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Protocol

from .errors import StepqError
from .event import Event


class EventTransport(Protocol):
    """Stores events and starts the runs they trigger; returns the ids of the stored events."""

    async def send(self, events: Sequence[Event]) -> list[str]: ...

    def send_sync(self, events: Sequence[Event]) -> list[str]: ...

    async def aclose(self) -> None: ...


def load_transport(name: str, url: str) -> EventTransport:
    """Instantiate the transport registered under ``name`` (e.g. ``redis``) for ``url``."""
    found = entry_points(group="stepq.transports", name=name)
    if not found:
        raise StepqError(
            f"no stepq event transport named {name!r} is installed; install the stepq distribution "
            f"(pip install stepq) rather than copying the sdk package alone"
        )
    factory = next(iter(found)).load()
    transport: EventTransport = factory(url)
    return transport
