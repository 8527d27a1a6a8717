"""Secrets from the environment, or from a file the environment names (the ``_FILE`` convention).

A secret ``NAME`` (the event keys, the signing key, a token) is the value of ``NAME``, or the content
of the file ``NAME_FILE`` names: the way Docker and Kubernetes mount secrets (``/run/secrets/...``),
so that it sits in no environment variable that ``ps e``, ``docker inspect`` or a crash report
shows. Both set at once is an error (which one is meant cannot be guessed), as is a file that
cannot be read or is empty; each error names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .errors import StepqError


class SecretConfigError(StepqError, ValueError):
    """A secret's settings are unusable: a file that cannot be read or is empty, two sources at once."""


def read_secret_file(path: str, variable: str) -> str:
    """The content of the secret file at ``path`` (named by ``variable``), without the surrounding
    whitespace that editors and ``echo`` add; an error naming the variable if it cannot be used."""
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretConfigError(f"{variable}={path}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    if not value:
        raise SecretConfigError(f"{variable}={path}: the file is empty")
    return value


def secret_from_env(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """``name``'s value, else the content of the file ``name + "_FILE"`` names, else None."""
    env = os.environ if environ is None else environ
    value = (env.get(name) or "").strip()
    path = (env.get(f"{name}_FILE") or "").strip()
    if value and path:
        raise SecretConfigError(f"both {name} and {name}_FILE are set; set one")
    if path:
        return read_secret_file(path, f"{name}_FILE")
    return value or None


def signing_key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``STEPQ_SIGNING_KEY``, else ``INNGEST_SIGNING_KEY`` (each, or its ``_FILE``), else None."""
    return secret_from_env("STEPQ_SIGNING_KEY", environ) or secret_from_env("INNGEST_SIGNING_KEY", environ)
