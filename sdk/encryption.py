"""End-to-end encryption middleware: step outputs, function output and the sensitive part of event
data are encrypted in the app's processes, so that Redis (and anything reading it) only holds
ciphertext. Needs PyNaCl: ``pip install 'stepq[encryption]'``.

Follows Inngest's encryption middleware (``inngest_encryption``) in names and wire shape, so either
reads what the other wrote: an encrypted value is ``{"__ENCRYPTED__": true, "__STRATEGY__":
"inngest/libsodium", "data": "<base64 nonce + ciphertext>"}``, made by libsodium's SecretBox
(XSalsa20-Poly1305, authenticated) with a 32-byte key; a text key is hashed to 32 bytes with BLAKE2b.

Encrypted: every ``step.run`` output (and ``step.send_event``'s ids), the function's return value,
``event.data["encrypted"]`` of events sent through the client or ``step.send_event``, and the same
field of an ``invoke``'s data. Left clear: event names, ids and every other field of event data
(trigger filters, ``wait_for_event``/cancel conditions and ``if_exp`` need them), step ids, sleep
and wait options, and error names, messages and stacks.

Keys: the first key encrypts, every key decrypts, so a key is rotated by putting the new one first
and keeping the old ones after it until no stored data needs them. A process with no key, or whose
keys open none of the data, fails the run at once with an ``EncryptionError`` that says so.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any, Final

from .errors import FunctionConfigError, NonRetriableError
from .event import Event
from .middleware import MiddlewareSync, StepMemos, TransformOutputResult
from .opcodes import Op

try:
    import nacl.encoding
    import nacl.exceptions
    import nacl.hash
    import nacl.secret
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "stepq.encryption needs PyNaCl: install stepq with its encryption extra (pip install 'stepq[encryption]')"
    ) from exc

#: Marks a value as encrypted.
ENCRYPTION_MARKER: Final = "__ENCRYPTED__"
#: Names the cipher that made it; Inngest's middleware writes (and checks) the same.
STRATEGY_MARKER: Final = "__STRATEGY__"
STRATEGY: Final = "inngest/libsodium"
#: The field of ``event.data`` encrypted by default.
DEFAULT_EVENT_FIELD: Final = "encrypted"
#: Keys read from the environment when none is given: comma-separated, the first one encrypts.
KEYS_ENV: Final = "STEPQ_ENCRYPTION_KEYS"

KeyLike = str | bytes


class EncryptionError(NonRetriableError):
    """Data could not be encrypted or decrypted (no key, a wrong key, a damaged value).

    Non-retriable: another attempt with the same keys would fail the same way, so the run fails at once.
    """


def _box(key: KeyLike, where: str) -> nacl.secret.SecretBox:
    if isinstance(key, str):
        if not key:
            raise FunctionConfigError(f"{where}: an encryption key must not be empty")
        raw = nacl.hash.generichash(
            key.encode("utf-8"), digest_size=nacl.secret.SecretBox.KEY_SIZE, encoder=nacl.encoding.RawEncoder
        )
    elif isinstance(key, bytes):
        raw = key
        if len(raw) != nacl.secret.SecretBox.KEY_SIZE:
            raise FunctionConfigError(
                f"{where}: a bytes key must be {nacl.secret.SecretBox.KEY_SIZE} bytes long, got {len(raw)}; "
                f"or pass a string, which is hashed to a key"
            )
    else:
        raise FunctionConfigError(f"{where}: an encryption key must be a str or bytes, got {type(key).__name__}")
    return nacl.secret.SecretBox(raw)


def _keys_from_env() -> list[str]:
    return [k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip()]


def is_encrypted(value: object) -> bool:
    """Whether ``value`` is an encrypted envelope this middleware can open."""
    return (
        isinstance(value, dict)
        and value.get(ENCRYPTION_MARKER) is True
        and value.get(STRATEGY_MARKER) == STRATEGY
        and isinstance(value.get("data"), str)
    )


class EncryptionMiddleware(MiddlewareSync):
    """Encrypts step outputs, function output and ``event.data["encrypted"]``; decrypts them for the
    function. Give it to the client (or a function) with ``EncryptionMiddleware.factory(key)``.
    """

    def __init__(
        self,
        client: Any,
        raw_request: object,
        secret_key: KeyLike | None = None,
        *,
        fallback_decryption_keys: Sequence[KeyLike] | None = None,
        decrypt_only: bool = False,
        event_encryption_field: str = DEFAULT_EVENT_FIELD,
    ) -> None:
        """``secret_key`` encrypts and decrypts; ``fallback_decryption_keys`` only decrypt (older
        keys, while rotating). Without ``secret_key``, the keys come from ``STEPQ_ENCRYPTION_KEYS``
        (comma-separated, the first encrypts). ``decrypt_only`` stops encrypting (to move away from
        encryption while old data remains). ``event_encryption_field`` is the field of event data
        that is encrypted.
        """
        super().__init__(client, raw_request)
        if secret_key is None:
            from_env = _keys_from_env()
            if not from_env:
                raise EncryptionError(
                    f"EncryptionMiddleware has no key: pass one to EncryptionMiddleware.factory(...) or set "
                    f"{KEYS_ENV} in this process's environment (data stays unreadable without the key it was "
                    f"encrypted with)"
                )
            secret_key, *older = from_env
            fallback_decryption_keys = [*older, *(fallback_decryption_keys or [])]
        _check_options(decrypt_only, event_encryption_field)
        self._box = _box(secret_key, "EncryptionMiddleware secret_key")
        self._boxes = [self._box] + [
            _box(key, f"EncryptionMiddleware fallback_decryption_keys[{i}]")
            for i, key in enumerate(fallback_decryption_keys or [])
        ]
        self._decrypt_only = decrypt_only
        self._field = event_encryption_field

    @classmethod
    def factory(
        cls,
        secret_key: KeyLike | None = None,
        *,
        fallback_decryption_keys: Sequence[KeyLike] | None = None,
        decrypt_only: bool = False,
        event_encryption_field: str = DEFAULT_EVENT_FIELD,
    ) -> Callable[[Any, object], EncryptionMiddleware]:
        """What ``middleware=[...]`` takes: builds the middleware for each request with these keys.

        Given keys are checked here, so a bad key fails when the app starts; without ``secret_key``
        the keys are read from ``STEPQ_ENCRYPTION_KEYS`` at each request.
        """
        _check_options(decrypt_only, event_encryption_field)
        if secret_key is not None:
            _box(secret_key, "EncryptionMiddleware.factory secret_key")
        for i, key in enumerate(fallback_decryption_keys or []):
            _box(key, f"EncryptionMiddleware.factory fallback_decryption_keys[{i}]")
        fallback = list(fallback_decryption_keys or [])

        def make(client: Any, raw_request: object) -> EncryptionMiddleware:
            return cls(
                client,
                raw_request,
                secret_key,
                fallback_decryption_keys=fallback,
                decrypt_only=decrypt_only,
                event_encryption_field=event_encryption_field,
            )

        return make

    # -- values --------------------------------------------------------------------------------------

    def encrypt(self, value: Any) -> Any:
        """``value`` (JSON-compatible) as an encrypted envelope; an envelope is left as it is."""
        if is_encrypted(value):
            return value
        plaintext = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
        sealed = bytes(self._box.encrypt(plaintext))  # nonce + ciphertext
        return {ENCRYPTION_MARKER: True, STRATEGY_MARKER: STRATEGY, "data": base64.b64encode(sealed).decode("ascii")}

    def decrypt(self, value: Any, what: str = "a value") -> Any:
        """The plaintext of an envelope (anything else is returned as it is); ``EncryptionError``
        naming ``what`` when no key opens it."""
        if not is_encrypted(value):
            return value
        try:
            sealed = base64.b64decode(value["data"], validate=True)
        except (binascii.Error, ValueError):
            raise EncryptionError(f"cannot decrypt {what}: its ciphertext is not valid base64") from None
        for box in self._boxes:
            try:
                plaintext = box.decrypt(sealed)
            except nacl.exceptions.CryptoError:
                continue
            try:
                return json.loads(plaintext.decode("utf-8"))
            except ValueError:
                raise EncryptionError(f"cannot decrypt {what}: it opened, but does not hold JSON") from None
        count = len(self._boxes)
        raise EncryptionError(
            f"cannot decrypt {what}: none of this process's {count} encryption key(s) opens it. It was encrypted "
            f"with another key (or altered): give this process that key, as a fallback_decryption_keys entry or "
            f"in {KEYS_ENV}"
        )

    def _decrypt_event_data(self, data: dict[str, Any], what: str) -> dict[str, Any]:
        if is_encrypted(data):  # the whole of data encrypted (as Inngest's middleware may send invokes)
            rest = {k: v for k, v in data.items() if k not in (ENCRYPTION_MARKER, STRATEGY_MARKER, "data")}
            opened = self.decrypt(data, f"{what}.data")
            if not isinstance(opened, dict):
                raise EncryptionError(f"cannot decrypt {what}.data: it does not hold an object")
            return {**rest, **opened}
        found = [k for k, v in data.items() if is_encrypted(v)]
        if not found:
            return data
        return {**data, **{k: self.decrypt(data[k], f"{what}.data.{k}") for k in found}}

    def _decrypted_event(self, event: Event, what: str) -> Event:
        data = self._decrypt_event_data(event.data, what)
        nested = data.get("event")
        if event.name.endswith("/function.failed") or event.name.endswith("/function.finished"):
            # A run's end carries the run's event (with its encrypted field) and result.
            data = dict(data)
            if isinstance(nested, dict) and isinstance(nested.get("data"), dict):
                data["event"] = {**nested, "data": self._decrypt_event_data(nested["data"], f"{what}.data.event")}
            if "result" in data:
                data["result"] = self.decrypt(data["result"], f"{what}.data.result")
        return event if data is event.data else dataclasses.replace(event, data=data)

    # -- hooks ---------------------------------------------------------------------------------------

    def transform_input(self, ctx: Any, function: Any, steps: StepMemos) -> None:
        """Decrypt the memoized steps' data and the events' encrypted field for the function."""
        for key, output in steps.items():
            what = f"the output of step {steps.name(key) or key!r}"
            if is_encrypted(output.data):
                output.data = self.decrypt(output.data, what)
            elif _looks_like_event(output.data):  # a wait_for_event memo: the event that arrived
                output.data = {**output.data, "data": self._decrypt_event_data(output.data["data"], what)}
        ctx.event = self._decrypted_event(ctx.event, "the run's event")
        ctx.events = [self._decrypted_event(e, f"the run's events[{i}]") for i, e in enumerate(ctx.events)]

    def transform_output(self, result: TransformOutputResult) -> None:
        """Encrypt a step's or the function's output, and an invoke's encrypted field."""
        if self._decrypt_only:
            return
        if result.has_output():
            result.output = self.encrypt(result.output)
        step = result.step
        if step is not None and step.op is Op.INVOKE_FUNCTION and step.opts is not None:
            payload = step.opts.get("payload")
            data = payload.get("data") if isinstance(payload, dict) else None
            if isinstance(payload, dict) and isinstance(data, dict) and self._field in data:
                payload["data"] = {**data, self._field: self.encrypt(data[self._field])}

    def before_send_events(self, events: list[Event]) -> None:
        """Encrypt each event's encrypted field before it is stored."""
        if self._decrypt_only:
            return
        for i, event in enumerate(events):
            if self._field in event.data:
                events[i] = dataclasses.replace(
                    event, data={**event.data, self._field: self.encrypt(event.data[self._field])}
                )


def _check_options(decrypt_only: Any, field: Any) -> None:
    if not isinstance(decrypt_only, bool):
        raise FunctionConfigError(f"EncryptionMiddleware: decrypt_only must be a bool, got {decrypt_only!r}")
    if not isinstance(field, str) or not field:
        raise FunctionConfigError(
            f"EncryptionMiddleware: event_encryption_field must be a non-empty string, got {field!r}"
        )


def _looks_like_event(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("name"), str) and isinstance(value.get("data"), dict)
