"""What ``serve`` is told, checked and completed from Inngest's environment variables
(``INNGEST_DEV``, ``INNGEST_SERVE_ORIGIN``, ``INNGEST_API_BASE_URL``/``INNGEST_BASE_URL``,
``INNGEST_SIGNING_KEY``/``INNGEST_SIGNING_KEY_FALLBACK``, ``INNGEST_ENV``)."""

from __future__ import annotations

import dataclasses
import os
from typing import TypedDict
from urllib.parse import urlsplit

from ..client import Inngest
from ..errors import FunctionConfigError
from ..signing import check_signing_key

DEFAULT_SERVE_PATH = "/api/inngest"
DEFAULT_API_BASE_URL = "http://127.0.0.1:8288"


def env(name: str) -> str | None:
    """The variable's value, stripped; None when unset or blank."""
    value = os.environ.get(name)
    return value.strip() if value and value.strip() else None


def _dev_url() -> str | None:
    """The dev server URL in ``INNGEST_DEV`` (the API to sync with), when it holds one."""
    raw = env("INNGEST_DEV")
    return raw if raw is not None and raw.startswith(("http://", "https://")) else None


def _normalize_origin(origin: str) -> str:
    origin = origin.strip().rstrip("/")
    if "://" not in origin:
        origin = f"https://{origin}"  # as Inngest's SDKs read a bare host
    parts = urlsplit(origin)
    if not parts.scheme or not parts.netloc:
        raise FunctionConfigError(
            f"serve: serve_origin must be a URL origin like https://app.example.com, got {origin!r}"
        )
    return f"{parts.scheme}://{parts.netloc}"


class ServeOptions(TypedDict, total=False):
    """The keywords of ``stepq.serve`` and ``stepq.serve_wsgi``, all optional: one left out comes
    from the client (``Inngest(...)``), else from Inngest's environment variables."""

    #: The URL origin registered on sync (``INNGEST_SERVE_ORIGIN``); none: the sync request's own.
    serve_origin: str | None
    #: The path registered on sync; default ``/api/inngest``.
    serve_path: str
    #: Checks and signs requests in production mode, which needs one (the client's, else
    #: ``INNGEST_SIGNING_KEY``).
    signing_key: str | None
    #: Tried after ``signing_key`` (the client's, else ``INNGEST_SIGNING_KEY_FALLBACK``).
    signing_key_fallback: str | None
    #: The stepq API for syncs and ``use_api`` reads (the client's, else ``INNGEST_API_BASE_URL``,
    #: ``INNGEST_BASE_URL``, a URL in ``INNGEST_DEV``, else http://127.0.0.1:8288).
    api_base_url: str | None
    #: Dev mode checks and signs nothing; default: not the client's ``is_production``
    #: (``INNGEST_DEV``).
    dev: bool | None
    #: The framework the app reports (``X-Inngest-Framework``, sync); default ``asgi`` or ``wsgi``.
    framework: str


@dataclasses.dataclass(frozen=True, slots=True)
class ServeSettings:
    """The checked settings of one served app."""

    dev: bool
    framework: str
    #: ``scheme://host[:port]`` registered on sync; None: the sync request's own origin.
    serve_origin: str | None
    serve_path: str
    api_base_url: str
    signing_key: str | None
    signing_key_fallback: str | None
    #: Sent as ``X-Inngest-Env`` on calls to the API (the client's ``env``, else ``INNGEST_ENV``).
    inngest_env: str | None = None

    @property
    def mode(self) -> str:
        """``dev`` or ``cloud``, as the executor's ``X-Inngest-Server-Kind`` names them."""
        return "dev" if self.dev else "cloud"

    @property
    def signing_keys(self) -> tuple[str | None, str | None]:
        return self.signing_key, self.signing_key_fallback

    @classmethod
    def for_client(cls, client: Inngest, options: ServeOptions, *, framework: str) -> ServeSettings:
        """``serve``'s ``options`` (``framework`` when they name none), then the client's settings
        (mode, keys, ``api_base_url``, ``env``), then the environment; a FunctionConfigError names
        what is wrong, a TypeError a keyword ``serve`` does not take."""
        unknown = sorted(set(options) - ServeOptions.__optional_keys__)
        if unknown:
            raise TypeError(f"serve: unexpected keyword argument(s): {', '.join(unknown)}")
        dev = options.get("dev")
        is_dev = (not client.is_production) if dev is None else bool(dev)
        serve_origin = options.get("serve_origin")
        origin = serve_origin if serve_origin is not None else env("INNGEST_SERVE_ORIGIN")
        serve_path = options.get("serve_path", DEFAULT_SERVE_PATH)
        if not isinstance(serve_path, str) or not serve_path.strip():
            raise FunctionConfigError("serve: serve_path must be a non-empty path like /api/inngest")
        api = (
            options.get("api_base_url")
            or client.api_base_url
            or env("INNGEST_API_BASE_URL")
            or env("INNGEST_BASE_URL")
            or (_dev_url() if is_dev else None)
            or DEFAULT_API_BASE_URL
        )
        if not api.startswith(("http://", "https://")):
            raise FunctionConfigError(f"serve: api_base_url must be an http(s) URL, got {api!r}")
        # The client's keys already fall back to INNGEST_SIGNING_KEY(_FALLBACK).
        key = _given(options.get("signing_key"), client.signing_key)
        fallback = _given(options.get("signing_key_fallback"), client.signing_key_fallback)
        checked_key = check_signing_key(key, what="signing_key") if key else None
        checked_fallback = check_signing_key(fallback, what="signing_key_fallback") if fallback else None
        if not is_dev and checked_key is None:
            raise FunctionConfigError(
                "serve: production mode needs a signing key to check the executor's signatures; pass "
                "signing_key= or set INNGEST_SIGNING_KEY (or use dev mode: dev=True or INNGEST_DEV=1)"
            )
        return cls(
            dev=is_dev,
            framework=options.get("framework", framework),
            serve_origin=_normalize_origin(origin) if origin else None,
            serve_path="/" + serve_path.strip().strip("/"),
            api_base_url=api.rstrip("/"),
            signing_key=checked_key,
            signing_key_fallback=checked_fallback,
            inngest_env=client.env,
        )


def _given(value: str | None, otherwise: str | None) -> str | None:
    """``value`` when given (an empty string too: it is checked), else ``otherwise``."""
    return value if value is not None else otherwise
