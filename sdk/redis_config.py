"""Which Redis a stepq process uses, read from its environment (the URL's forms: ``stepq.runtime.redis_urls``).

``STEPQ_REDIS_URL`` holds the URL; ``STEPQ_REDIS_URL_FILE`` names a file that holds it instead, the
way Docker and Kubernetes mount secrets (``/run/secrets/...``), so that a URL with a password need
not sit in an environment variable that ``ps e``, ``docker inspect`` and crash reports show. The
password alone can come from a file too (``STEPQ_REDIS_PASSWORD_FILE``, read where the connection
is made).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from . import secret_env
from .secret_env import SecretConfigError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
URL_ENV = "STEPQ_REDIS_URL"
URL_FILE_ENV = "STEPQ_REDIS_URL_FILE"
PASSWORD_FILE_ENV = "STEPQ_REDIS_PASSWORD_FILE"


class RedisConfigError(SecretConfigError):
    """The Redis settings are unusable: a bad URL, a missing secret file, settings that conflict."""


def read_secret_file(path: str, variable: str) -> str:
    """``stepq.secret_env.read_secret_file``, its error a ``RedisConfigError``."""
    try:
        return secret_env.read_secret_file(path, variable)
    except SecretConfigError as exc:
        raise RedisConfigError(str(exc)) from None


def configured_redis_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The URL ``STEPQ_REDIS_URL`` or ``STEPQ_REDIS_URL_FILE`` gives, or None when neither is set.

    Both at once is an error: which one is meant cannot be guessed."""
    env = os.environ if environ is None else environ
    url = (env.get(URL_ENV) or "").strip()
    path = (env.get(URL_FILE_ENV) or "").strip()
    if url and path:
        raise RedisConfigError(f"both {URL_ENV} and {URL_FILE_ENV} are set; set one")
    if path:
        return read_secret_file(path, URL_FILE_ENV)
    return url or None


def redis_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    """``configured_redis_url()``, else Redis on localhost."""
    return configured_redis_url(environ) or DEFAULT_REDIS_URL
