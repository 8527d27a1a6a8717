"""What ``serve`` is told, checked and completed from Inngest's environment variables
(``INNGEST_DEV``, ``INNGEST_SERVE_ORIGIN``, ``INNGEST_API_BASE_URL``/``INNGEST_BASE_URL``,
``INNGEST_SIGNING_KEY``/``INNGEST_SIGNING_KEY_FALLBACK``, ``INNGEST_ENV``)."""

from __future__ import annotations

import dataclasses
import os
from urllib.parse import urlsplit

from stepq.client import Inngest
from stepq.errors import FunctionConfigError
from stepq.signing import check_signing_key

DEFAULT_SERVE_PATH = "/api/inngest"
DEFAULT_API_BASE_URL = "http://127.0.0.1:8288"


def env(name: str) -> str | None:
    """The variable's value, stripped; None when unset or blank."""
    value = os.environ.get(name)
    return value.strip() if value and value.strip() else None


def _dev_from_env() -> tuple[bool, str | None]:
    """(dev mode, dev server URL) from ``INNGEST_DEV``: set and not 0/false means dev; a URL also
    names the API to sync with."""
    raw = env("INNGEST_DEV")
    if raw is None or raw.lower() in ("0", "false", "no", "off"):
        return False, None
    return True, raw if raw.startswith(("http://", "https://")) else None


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
    def resolve(
        cls,
        *,
        serve_origin: str | None,
        serve_path: str,
        signing_key: str | None,
        signing_key_fallback: str | None,
        api_base_url: str | None,
        dev: bool | None,
        framework: str,
        inngest_env: str | None = None,
    ) -> ServeSettings:
        """The arguments given, the environment for those left out; a FunctionConfigError names
        what is wrong."""
        env_dev, dev_url = _dev_from_env()
        is_dev = env_dev if dev is None else bool(dev)
        origin = serve_origin if serve_origin is not None else env("INNGEST_SERVE_ORIGIN")
        if not isinstance(serve_path, str) or not serve_path.strip():
            raise FunctionConfigError("serve: serve_path must be a non-empty path like /api/inngest")
        api = (
            api_base_url
            or env("INNGEST_API_BASE_URL")
            or env("INNGEST_BASE_URL")
            or (dev_url if is_dev else None)
            or DEFAULT_API_BASE_URL
        )
        if not api.startswith(("http://", "https://")):
            raise FunctionConfigError(f"serve: api_base_url must be an http(s) URL, got {api!r}")
        key = signing_key if signing_key is not None else env("INNGEST_SIGNING_KEY")
        fallback = signing_key_fallback if signing_key_fallback is not None else env("INNGEST_SIGNING_KEY_FALLBACK")
        checked_key = check_signing_key(key, what="signing_key") if key else None
        checked_fallback = check_signing_key(fallback, what="signing_key_fallback") if fallback else None
        if not is_dev and checked_key is None:
            raise FunctionConfigError(
                "serve: production mode needs a signing key to check the executor's signatures; pass "
                "signing_key= or set INNGEST_SIGNING_KEY (or use dev mode: dev=True or INNGEST_DEV=1)"
            )
        return cls(
            dev=is_dev,
            framework=framework,
            serve_origin=_normalize_origin(origin) if origin else None,
            serve_path="/" + serve_path.strip().strip("/"),
            api_base_url=api.rstrip("/"),
            signing_key=checked_key,
            signing_key_fallback=checked_fallback,
            inngest_env=inngest_env or env("INNGEST_ENV"),
        )

    @classmethod
    def for_client(
        cls,
        client: Inngest,
        *,
        serve_origin: str | None,
        serve_path: str,
        signing_key: str | None,
        signing_key_fallback: str | None,
        api_base_url: str | None,
        dev: bool | None,
        framework: str,
    ) -> ServeSettings:
        """``resolve``, taking what ``serve`` was not given from the client: its mode
        (``is_production``), keys, ``api_base_url`` and ``env``. ``serve``'s own arguments win."""
        return cls.resolve(
            serve_origin=serve_origin,
            serve_path=serve_path,
            signing_key=signing_key if signing_key is not None else client.signing_key,
            signing_key_fallback=(
                signing_key_fallback if signing_key_fallback is not None else client.signing_key_fallback
            ),
            api_base_url=api_base_url or client.api_base_url,
            dev=(not client.is_production) if dev is None else dev,
            framework=framework,
            inngest_env=client.env,
        )
