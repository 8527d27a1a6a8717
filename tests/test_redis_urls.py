"""Where a process finds Redis and how it logs in: the URL from ``STEPQ_REDIS_URL`` or a secret file,
the password from a file, the URL forms checked before anything connects (with errors that name the
problem and never show a password), and the CLI saying so instead of a traceback."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from redis.asyncio import Redis

import stepq
from stepq.redis_config import RedisConfigError, configured_redis_url, redis_url_from_env
from stepq.runtime import keys
from stepq.runtime.redis_connections import FailoverConnection, FailoverSSLConnection
from stepq.runtime.redis_urls import parse_redis_url, redact
from tests.helpers import ROOT, STEPQ_CLI
from tests.redis_servers import RedisServer


def test_the_url_comes_from_the_variable_or_from_the_file_it_names_never_both(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text("  redis://u:p@db:6380/2\n")
    assert redis_url_from_env({}) == "redis://localhost:6379/0"
    assert configured_redis_url({}) is None
    assert redis_url_from_env({"STEPQ_REDIS_URL": "redis://a:1/0"}) == "redis://a:1/0"
    assert redis_url_from_env({"STEPQ_REDIS_URL_FILE": str(secret)}) == "redis://u:p@db:6380/2"
    with pytest.raises(RedisConfigError, match="both STEPQ_REDIS_URL and STEPQ_REDIS_URL_FILE"):
        redis_url_from_env({"STEPQ_REDIS_URL": "redis://a:1/0", "STEPQ_REDIS_URL_FILE": str(secret)})
    with pytest.raises(RedisConfigError, match=r"STEPQ_REDIS_URL_FILE=.*cannot read"):
        redis_url_from_env({"STEPQ_REDIS_URL_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(RedisConfigError, match="empty"):
        redis_url_from_env({"STEPQ_REDIS_URL_FILE": str(tmp_path / "empty")})


def test_the_password_file_gives_the_urls_user_its_password(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret:/@x\n")
    env = {"STEPQ_REDIS_PASSWORD_FILE": str(secret)}
    target = parse_redis_url("redis://stepq-worker@db:6379/3", env)
    assert (target.connection["username"], target.connection["password"], target.connection["db"]) == (
        "stepq-worker",
        "s3cret:/@x",
        3,
    )
    assert target.connection["connection_class"] is FailoverConnection
    with pytest.raises(RedisConfigError, match="has a password and STEPQ_REDIS_PASSWORD_FILE is set") as both:
        parse_redis_url("redis://u:inline@db:6379/0", env)
    assert "inline" not in str(both.value)


def test_urls_are_checked_and_errors_name_the_problem_without_the_password() -> None:
    bad = {
        "http://db:6379/0": "unknown scheme",
        "redis://:pw@db:6379/zero": "the database must be a number",
        "redis://:pw@db:6379/0?socket_timeout=1": "unknown query parameter 'socket_timeout'",
        "redis://:pw@db:6379/0?ssl_ca_certs=/x": "need TLS: use rediss://",
        "rediss://:pw@db:6379/0?ssl_cert_reqs=none&ssl_check_hostname=true": "ssl_check_hostname=true needs",
        "redis+sentinel://:pw@s1:26379/main/0/extra": "/service_name or /service_name/db",
        "redis://:pw@db:6379/0?db=1&db=2": "'db' is given 2 times",
    }
    for url, message in bad.items():
        with pytest.raises(RedisConfigError, match=message) as failure:
            parse_redis_url(url, {})
        assert "pw" not in str(failure.value), failure.value
    # TLS: hostname checking on unless certificates are not checked at all
    target = parse_redis_url("rediss://db:6380/0?ssl_cert_reqs=none", {})
    assert (target.connection["ssl_cert_reqs"], target.connection["ssl_check_hostname"]) == ("none", False)
    target = parse_redis_url("rediss://db:6380/0", {})
    assert target.connection["connection_class"] is FailoverSSLConnection
    assert (target.connection["ssl_cert_reqs"], target.connection["ssl_check_hostname"]) == ("required", True)
    sentinel = parse_redis_url("rediss+sentinel://s1,s2:5000/main?sentinel_password=sp", {})
    assert sentinel.sentinels == (("s1", 26379), ("s2", 5000))
    assert sentinel.sentinel_connection["password"] == "sp" and sentinel.sentinel_connection["ssl"] is True


def test_redact_hides_every_password() -> None:
    assert redact("redis://u:p/w@h:1/0") == "redis://u:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"
    assert (
        redact("redis+sentinel://a:1/m?sentinel_password=zz&db=1")
        == "redis+sentinel://a:1/m?sentinel_password=***&db=1"
    )
    assert redact("unix:///s.sock?password=x") == "unix:///s.sock?password=***"


async def test_processes_log_in_with_the_url_and_password_from_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real Redis with a password: the SDK's sender and the CLI find it through the files alone."""
    server = RedisServer(tmp_path, "redis-auth", ["requirepass file-secret"]).start()
    try:
        (tmp_path / "url").write_text(f"redis://127.0.0.1:{server.port}/0\n")
        (tmp_path / "password").write_text("file-secret\n")
        env = {"STEPQ_REDIS_URL_FILE": str(tmp_path / "url"), "STEPQ_REDIS_PASSWORD_FILE": str(tmp_path / "password")}
        base = {k: v for k, v in os.environ.items() if not k.startswith("STEPQ_REDIS")}
        sent = subprocess.run(
            [*STEPQ_CLI, "send", "test/files", "--data", '{"a": 1}'],
            cwd=ROOT,
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        admin = Redis(port=server.port, password="file-secret")
        try:
            assert await admin.exists(keys.event(json.loads(sent.stdout)["ids"][0]))
        finally:
            await admin.aclose()
        monkeypatch.delenv("STEPQ_REDIS_URL", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        client = stepq.Client("t-files")
        assert client.redis_url == f"redis://127.0.0.1:{server.port}/0"
        try:
            assert await client.send(stepq.Event(name="test/files", data={}))
        finally:
            await client.aclose()
        # Both variables at once: the CLI says which, and exits with its usage code.
        both = subprocess.run(
            [*STEPQ_CLI, "runs"],
            cwd=ROOT,
            env={**base, **env, "STEPQ_REDIS_URL": "redis://127.0.0.1:1/0"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert both.returncode == 2 and "both STEPQ_REDIS_URL and STEPQ_REDIS_URL_FILE" in both.stderr, both.stderr
        assert "Traceback" not in both.stderr
    finally:
        server.stop()
