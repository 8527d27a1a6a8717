"""End-to-end encryption (``stepq.encryption.EncryptionMiddleware``) with real workers and Redis.

After a run, every key of the test database is dumped (by type) and searched for the plaintext: it
must never be there, while a marker sent in a clear field must be (so that the search can fail).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nacl.encoding
import nacl.hash
import nacl.secret
import pytest
from redis.asyncio import Redis

import stepq
from stepq.encryption import (
    KEYS_ENV,
    EncryptionError,
    EncryptionMiddleware,
    is_encrypted,
)
from stepq.runtime.codec import unpack
from tests.helpers import (
    REDIS_URL,
    StartWorkers,
    run_ids_for_event,
    run_memo,
    runs_of,
    sha1,
    start_run,
    wait_for_run,
)
from tests.http_fixtures import Stack, start_stack, synced


def new_key() -> str:
    return secrets.token_hex(32)


def middleware(*keys: str) -> EncryptionMiddleware:
    """A middleware instance with ``keys`` (the first encrypts), to read what Redis holds."""
    return EncryptionMiddleware(None, None, keys[0], fallback_decryption_keys=list(keys[1:]))


@contextlib.asynccontextmanager
async def encrypting_client(key: str, event_api_url: str | None = None) -> AsyncIterator[stepq.Client]:
    """A sender whose events' ``encrypted`` field is encrypted with ``key``, to the test database (or
    to ``event_api_url``), closed on exit."""
    sender = stepq.Client(
        "enc-sender", redis_url=REDIS_URL, event_api_url=event_api_url, middleware=[EncryptionMiddleware.factory(key)]
    )
    try:
        yield sender
    finally:
        await sender.aclose()


def markers() -> tuple[str, str]:
    """A secret that Redis must never hold in plaintext, and a clear marker that it must hold (so
    that the search for the secret can fail)."""
    return f"PLAINTEXT-{uuid.uuid4().hex}", f"CLEARTEXT-{uuid.uuid4().hex}"


async def start_secret_run(redis: Redis, key: str, function: str, out: Path) -> tuple[str, str, str]:
    """Start a run of ``function`` (event ``enc/<function>``) with a new secret, encrypted with
    ``key``, and a clear marker; the function writes what it saw to ``out``. Returns the run's id,
    the secret and the marker."""
    secret, clear = markers()
    async with encrypting_client(key) as sender:
        data = {"encrypted": {"secret": secret}, "clear": clear, "out": str(out)}
        run_id = await start_run(sender, redis, function, f"enc/{function}", data)
    return run_id, secret, clear


async def dump_database(redis: Redis) -> list[bytes]:
    """Every key of the database and every value it holds, whatever its type."""
    chunks: list[bytes] = []
    async for key in redis.scan_iter(count=1000):
        chunks.append(key)
        kind = (await redis.type(key)).decode()
        if kind == "string":
            chunks.append(await redis.get(key) or b"")
        elif kind == "hash":
            for field, value in (await redis.hgetall(key)).items():  # type: ignore[misc]
                chunks += [field, value]
        elif kind == "list":
            chunks += await redis.lrange(key, 0, -1)  # type: ignore[misc]
        elif kind == "set":
            chunks += list(await redis.smembers(key))  # type: ignore[misc]
        elif kind == "zset":
            chunks += [member for member, _ in await redis.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for entry_id, fields in await redis.xrange(key):
                chunks.append(entry_id)
                for field, value in fields.items():
                    chunks += [field, value]
        elif kind != "none":  # "none": the key expired between SCAN and TYPE
            raise AssertionError(f"key {key!r} has a type this dump does not read: {kind}")
    return chunks


async def assert_no_plaintext(redis: Redis, secret: str, clear: str) -> None:
    dump = await dump_database(redis)
    assert any(clear.encode() in chunk for chunk in dump), "the clear marker was not found: the dump misses data"
    leaks = [chunk[:200] for chunk in dump if secret.encode() in chunk]
    assert not leaks, f"Redis holds the plaintext: {leaks}"


async def wait_file(path: Path, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} was not written within {timeout} s")
        await asyncio.sleep(0.02)
    return json.loads(path.read_text())


async def test_redis_never_holds_step_outputs_event_data_or_output_in_plaintext(
    redis: Redis, start_workers: StartWorkers, tmp_path: Path
) -> None:
    key = new_key()
    start_workers("encrypted", env={KEYS_ENV: key})
    out = tmp_path / "flow.json"
    run_id, secret, clear = await start_secret_run(redis, key, "flow", out)
    view = await wait_for_run(redis, run_id)
    assert view.status == "completed", view.error
    expected = {"secret": secret, "step": f"{secret}-step", "invoked": f"{secret}-invoked-child"}
    # What the function saw: its event, step output and invoke result, decrypted.
    assert await wait_file(out) == expected
    # An event sent with step.send_event reached its function encrypted, and was decrypted there.
    assert await wait_file(tmp_path / "flow.json.told") == f"{secret}-sent"
    [told] = await runs_of(redis, "told")
    told_view = await wait_for_run(redis, told.run_id)
    assert told_view.status == "completed", told_view.error
    # What Redis holds: envelopes that the key opens.
    assert is_encrypted(view.output)
    assert middleware(key).decrypt(view.output) == expected
    memo = {k: unpack(v) for k, v in (await run_memo(redis, run_id)).items()}
    assert middleware(key).decrypt(memo[sha1("derive")]["data"]) == f"{secret}-step"
    await assert_no_plaintext(redis, secret, clear)


async def test_a_worker_without_the_key_fails_the_run_saying_so(
    redis: Redis, start_workers: StartWorkers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEYS_ENV, raising=False)
    start_workers("encrypted")
    async with encrypting_client(new_key()) as sender:
        data = {"encrypted": {"secret": "s"}, "out": str(tmp_path / "never.json")}
        run_id = await start_run(sender, redis, "flow", "enc/flow", data)
    view = await wait_for_run(redis, run_id, timeout=30)
    assert view.status == "failed"
    assert view.error["name"] == "EncryptionError"
    assert "EncryptionMiddleware has no key" in view.error["message"]
    assert KEYS_ENV in view.error["message"]
    assert not (tmp_path / "never.json").exists()


async def test_a_worker_with_a_wrong_key_fails_the_run_saying_so(
    redis: Redis, start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers("encrypted", env={KEYS_ENV: new_key()})
    async with encrypting_client(new_key()) as sender:
        data = {"encrypted": {"secret": "s"}, "out": str(tmp_path / "never.json")}
        run_id = await start_run(sender, redis, "flow", "enc/flow", data)
    view = await wait_for_run(redis, run_id, timeout=30)
    assert view.status == "failed"
    assert view.error["name"] == "EncryptionError"
    message = view.error["message"]
    assert "cannot decrypt the run's event.data.encrypted" in message
    assert "none of this process's 1 encryption key(s) opens it" in message
    # Failed at once: a wrong key is not retried.
    assert [s for s in view.steps if s.attempts > 1] == []


async def test_rotation_the_new_key_encrypts_the_old_one_still_decrypts(
    redis: Redis, start_workers: StartWorkers, tmp_path: Path
) -> None:
    old, new = new_key(), new_key()
    [first_worker] = start_workers("encrypted", env={KEYS_ENV: old})
    secret, clear = markers()
    out = tmp_path / "rotate.json"
    async with encrypting_client(old) as sender:
        data = {"encrypted": {"secret": secret}, "tag": clear, "out": str(out)}
        run_id = await start_run(sender, redis, "rotate", "enc/rotate", data)
        await wait_for_run(redis, run_id, statuses=("waiting",))
    first_worker.stop()
    # The new key first (it encrypts), the old one after it (it still decrypts).
    start_workers("encrypted", env={KEYS_ENV: f"{new},{old}"})
    async with encrypting_client(new) as sender:
        await sender.send(stepq.Event(name="enc/go", data={"encrypted": f"{secret}-go", "tag": clear}))
    view = await wait_for_run(redis, run_id)
    assert view.status == "completed", view.error
    expected = {"first": f"{secret}-first", "second": f"{secret}-second", "go": f"{secret}-go"}
    assert await wait_file(out) == expected
    memo = {k: unpack(v) for k, v in (await run_memo(redis, run_id)).items()}
    first, second = memo[sha1("first")]["data"], memo[sha1("second")]["data"]
    assert middleware(old).decrypt(first) == f"{secret}-first"
    assert middleware(new).decrypt(second) == f"{secret}-second"
    assert middleware(new).decrypt(view.output) == expected
    with pytest.raises(EncryptionError):
        middleware(old).decrypt(second)
    with pytest.raises(EncryptionError):
        middleware(new).decrypt(first)
    await assert_no_plaintext(redis, secret, clear)


async def test_a_failure_handler_gets_the_failed_runs_event_decrypted(
    redis: Redis, start_workers: StartWorkers, tmp_path: Path
) -> None:
    key = new_key()
    start_workers("encrypted", env={KEYS_ENV: key})
    out = tmp_path / "handled.json"
    run_id, secret, clear = await start_secret_run(redis, key, "fails", out)
    assert (await wait_for_run(redis, run_id)).status == "failed"
    assert await wait_file(out) == {"handled": secret, "error": "no refunds today"}
    [handler_run] = await runs_of(redis, "fails-failure")
    assert (await wait_for_run(redis, handler_run.run_id)).status == "completed"
    await assert_no_plaintext(redis, secret, clear)


#: The key of the served app (module-wide: the app process starts once per class).
SERVED_KEY = new_key()


@pytest.fixture(scope="class")
def served_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    app_env = {"INNGEST_DEV": "1", KEYS_ENV: SERVED_KEY}
    directory = tmp_path_factory.mktemp("enc-served")
    app = "tests.apps.encrypted_served:app"
    with synced(start_stack(directory, app, app_env=app_env, events_over_http=True)) as stack:
        yield stack


class TestServedOverHttp:
    """The same guarantees when the app is served (``stepq.serve``) and driven by ``stepq worker --http``;
    the stack is shared by the class (its tests do not flush the database)."""

    async def test_redis_never_holds_the_plaintext_of_a_served_run(
        self, served_stack: Stack, db: Redis, tmp_path: Path
    ) -> None:
        secret, clear = markers()
        out = tmp_path / "flow.json"
        async with encrypting_client(SERVED_KEY, event_api_url=served_stack.api_url) as sender:
            data = {"encrypted": {"secret": secret}, "clear": clear, "out": str(out)}
            [event_id] = await sender.send(stepq.Event(name="enc/flow", data=data))
        [run_id] = await run_ids_for_event(db, "flow", event_id)
        try:
            view = await wait_for_run(db, run_id, timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{served_stack.output()}") from None
        assert view.status == "completed", f"{view.error}\n{served_stack.output()}"
        expected = {"secret": secret, "step": f"{secret}-step", "invoked": f"{secret}-invoked-child"}
        assert await wait_file(out) == expected
        assert await wait_file(tmp_path / "flow.json.told") == f"{secret}-sent"
        [told] = await runs_of(db, "told")
        assert (await wait_for_run(db, told.run_id, timeout=60)).status == "completed"
        assert middleware(SERVED_KEY).decrypt(view.output) == expected
        await assert_no_plaintext(db, secret, clear)


# -- the envelope ------------------------------------------------------------------------------------


def test_the_envelope_is_inngests_libsodium_shape_and_a_text_key_is_hashed_with_blake2b() -> None:
    key = "my-secret-key"
    envelope = middleware(key).encrypt({"card": "4242"})
    assert set(envelope) == {"__ENCRYPTED__", "__STRATEGY__", "data"}
    assert envelope["__ENCRYPTED__"] is True and envelope["__STRATEGY__"] == "inngest/libsodium"
    # Opened by hand as Inngest's middleware does: SecretBox, key = BLAKE2b-256 of the text.
    raw_key = nacl.hash.generichash(key.encode(), digest_size=32, encoder=nacl.encoding.RawEncoder)
    plaintext = nacl.secret.SecretBox(raw_key).decrypt(base64.b64decode(envelope["data"]))
    assert json.loads(plaintext) == {"card": "4242"}
    # Each encryption has its own nonce.
    assert middleware(key).encrypt({"card": "4242"})["data"] != envelope["data"]


def test_an_altered_envelope_is_refused() -> None:
    mw = middleware("k")
    envelope = mw.encrypt("x")
    sealed = bytearray(base64.b64decode(envelope["data"]))
    sealed[-1] ^= 1
    with pytest.raises(EncryptionError, match="none of this process's 1 encryption key"):
        mw.decrypt({**envelope, "data": base64.b64encode(bytes(sealed)).decode()}, "it")


def test_bad_keys_and_options_are_refused_when_the_app_starts() -> None:
    with pytest.raises(stepq.FunctionConfigError, match="must be 32 bytes long, got 5"):
        EncryptionMiddleware.factory(b"short")
    with pytest.raises(stepq.FunctionConfigError, match="must not be empty"):
        EncryptionMiddleware.factory("k", fallback_decryption_keys=[""])
    with pytest.raises(stepq.FunctionConfigError, match="event_encryption_field"):
        EncryptionMiddleware.factory("k", event_encryption_field="")


def test_decrypt_only_stops_encrypting_but_still_decrypts() -> None:
    key = new_key()
    envelope = middleware(key).encrypt(1)
    reader = EncryptionMiddleware.factory(key, decrypt_only=True)(None, None)
    events = [stepq.Event(name="e", data={"encrypted": "clear now"})]
    reader.before_send_events(events)
    assert events[0].data == {"encrypted": "clear now"}
    assert reader.decrypt(envelope) == 1


def test_only_the_encrypted_field_of_event_data_is_encrypted() -> None:
    mw = middleware(new_key())
    events = [stepq.Event(name="e", data={"encrypted": {"ssn": "1"}, "order_id": "o-1"})]
    mw.before_send_events(events)
    assert events[0].data["order_id"] == "o-1"
    assert is_encrypted(events[0].data["encrypted"])
    assert mw.decrypt(events[0].data["encrypted"]) == {"ssn": "1"}
