"""Request and response signatures, and API bearer tokens, as Inngest computes them.

The executor signs each call to an app with ``X-Inngest-Signature: t=<unix s>&s=<hex>``, where the
hex is HMAC-SHA256 over the body bytes followed by the decimal timestamp. The HMAC key is the
signing key with its ``signkey-<env>-`` prefix removed, used as the UTF-8 bytes of that (hex) text,
not hex-decoded: Inngest's server (``httpdriver/util.go`` ``Sign``) and its Python SDK
(``net._validate_sig``, ``net.sign_response``) both do so. The app signs its answer the same way.
See reference/inngest-protocol.md §2.2.

Inngest's executor sends JCS-canonical bodies (RFC 8785) and its Python SDK canonicalizes a body
before checking it, so a signer talking to Inngest's SDKs must sign canonical bytes:
``canonical_json`` produces them. ``verify`` accepts a signature over the exact bytes received or
over their canonical form.

Calls from an app to the API (sync, ``use_api`` reads) carry ``Authorization: Bearer <hash>``, the
SHA-256 of the hex-decoded key (``hash_signing_key``; prefix dropped, as the Python SDK sends it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from typing import Any

import jcs

from .errors import StepqError

#: The header that carries a signature, on requests and on responses.
SIGNATURE_HEADER = "X-Inngest-Signature"
#: Signatures older (or further in the future) than this many seconds are refused.
DEFAULT_TOLERANCE_S = 300

_PREFIX = re.compile(r"^signkey-\w+-")
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_SIG_HEX = re.compile(r"^[0-9a-f]{64}$")


class SignatureError(StepqError):
    """A request's signature is missing, malformed, stale or does not match; ``reason`` says which."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.message = message
        #: ``missing``, ``malformed``, ``stale``, ``no_key`` or ``mismatch``.
        self.reason = reason


class SigningKeyError(StepqError, ValueError):
    """A signing key is not ``[signkey-<env>-]<hex>``."""


def strip_prefix(key: str) -> str:
    """The key without its ``signkey-<env>-`` prefix (``signkey-prod-ab12`` -> ``ab12``)."""
    match = _PREFIX.match(key)
    return key[match.end() :] if match else key


def check_signing_key(key: str, *, what: str = "signing key") -> str:
    """Return ``key`` if it is a usable signing key, else raise SigningKeyError naming the problem."""
    if not isinstance(key, str) or not key.strip():
        raise SigningKeyError(f"{what}: expected a non-empty string")
    body = strip_prefix(key.strip())
    if not body or len(body) % 2 or not _HEX.match(body):
        raise SigningKeyError(
            f"{what}: expected hex digits (an even number), optionally after a 'signkey-<env>-' prefix"
        )
    return key.strip()


def sign(body: bytes, key: str, now: int) -> str:
    """The ``X-Inngest-Signature`` value for ``body`` at unix time ``now`` (seconds)."""
    timestamp = int(now)
    mac = hmac.new(strip_prefix(key).encode("utf-8"), body, hashlib.sha256)
    mac.update(str(timestamp).encode("utf-8"))
    return f"t={timestamp}&s={mac.hexdigest()}"


def parse_header(header: str) -> tuple[int, str]:
    """(timestamp, hex signature) from ``t=<unix s>&s=<hex>``; SignatureError when malformed."""
    fields: dict[str, str] = {}
    for part in header.strip().split("&"):
        name, sep, value = part.partition("=")
        if not sep or name in fields:
            raise SignatureError(
                f"{SIGNATURE_HEADER} is malformed: expected 't=<unix seconds>&s=<hex>'", reason="malformed"
            )
        fields[name.strip()] = value.strip()
    t, s = fields.get("t"), fields.get("s")
    if t is None or s is None or not (t.isascii() and t.isdigit()) or not _SIG_HEX.match(s.lower()):
        raise SignatureError(
            f"{SIGNATURE_HEADER} is malformed: expected 't=<unix seconds>&s=<64 hex digits>'", reason="malformed"
        )
    return int(t), s.lower()


def matching_key(
    body: bytes,
    header: str | None,
    keys: Iterable[str | None],
    now: int,
    tolerance: int = DEFAULT_TOLERANCE_S,
) -> str:
    """The first of ``keys`` that signed ``body`` (as sent, or in canonical form); else SignatureError."""
    if header is None or not header.strip():
        raise SignatureError(f"missing {SIGNATURE_HEADER} header", reason="missing")
    timestamp, signature = parse_header(header)
    age = int(now) - timestamp
    if abs(age) > tolerance:
        when = f"{age} s old" if age > 0 else f"{-age} s in the future"
        raise SignatureError(
            f"{SIGNATURE_HEADER} timestamp is {when}; signatures are accepted within {tolerance} s",
            reason="stale",
        )
    candidates = [k for k in keys if k]
    if not candidates:
        raise SignatureError("no signing key is configured to check the signature", reason="no_key")
    bodies = [body]
    canonical = _canonical_or_none(body)
    if canonical is not None and canonical != body:
        bodies.append(canonical)
    for key in candidates:
        for candidate in bodies:
            expected = sign(candidate, key, timestamp).rpartition("&s=")[2]
            if hmac.compare_digest(expected, signature):
                return key
    tried = "the signing key" if len(candidates) == 1 else f"any of {len(candidates)} signing keys"
    raise SignatureError(f"{SIGNATURE_HEADER} does not match {tried}", reason="mismatch")


def verify(
    body: bytes,
    header: str | None,
    keys: Iterable[str | None],
    now: int,
    tolerance: int = DEFAULT_TOLERANCE_S,
) -> None:
    """Raise SignatureError unless ``header`` signs ``body`` with one of ``keys`` within ``tolerance`` s."""
    matching_key(body, header, keys, now, tolerance)


def hash_signing_key(key: str) -> str:
    """SHA-256 (hex) of the hex-decoded key, its ``signkey-<env>-`` prefix removed first."""
    stripped = strip_prefix(key)
    try:
        raw = bytes.fromhex(stripped)
    except ValueError:
        raise SigningKeyError("signing key: expected hex digits after an optional 'signkey-<env>-' prefix") from None
    return hashlib.sha256(raw).hexdigest()


def bearer(key: str) -> str:
    """The ``Authorization`` header value for calls to the API: ``Bearer <hashed key>``."""
    return f"Bearer {hash_signing_key(key)}"


def bearer_matches(authorization: str | None, keys: Iterable[str | None]) -> bool:
    """Whether an ``Authorization`` header carries the hashed form of one of ``keys``.

    Accepts the hash alone (Python SDK) or after the key's ``signkey-<env>-`` prefix (JS SDK).
    """
    if not authorization:
        return False
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    token = strip_prefix(token.strip())
    found = False
    for key in keys:
        if key:
            try:
                found |= hmac.compare_digest(token.encode(), hash_signing_key(key).encode())
            except SigningKeyError:
                continue
    return found


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value: sorted keys, no whitespace, ECMAScript numbers.

    The ``jcs`` package, as Inngest's Python SDK uses to check signatures: both sides must write
    the same bytes (integers beyond 2**53 become doubles, as JCS says)."""
    return bytes(jcs.canonicalize(value))


def _canonical_or_none(body: bytes) -> bytes | None:
    if not body:
        return None
    try:
        return canonical_json(json.loads(body))
    except (ValueError, TypeError, RecursionError):
        return None
