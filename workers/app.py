"""Finding the user's app: ``module.path:client``."""

from __future__ import annotations

import importlib
import os
import sys

from stepq.client import Client


class AppLoadError(Exception):
    """The ``MODULE:CLIENT`` reference could not be loaded."""


def load_client(reference: str) -> Client:
    """Import ``module:attribute`` (from the current directory too) and return the Client it names."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise AppLoadError(f"expected MODULE:CLIENT (like 'myapp.jobs:client'), got {reference!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(f"cannot import module {module_name!r}: {exc}") from exc
    client = getattr(module, attribute, None)
    if not isinstance(client, Client):
        found = type(client).__name__ if client is not None else "nothing"
        raise AppLoadError(f"{reference}: expected a stepq.Inngest (or Client), found {found}")
    if not client.functions:
        raise AppLoadError(f"{reference}: the client defines no functions")
    return client
