"""Secrets from files (``NAME_FILE``, the way Docker and Kubernetes mount them): the helper, the API's
settings, and a real ``stepq api`` whose event key and metrics token are files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from stepq.runtime.api import ApiSettings
from stepq.secret_env import SecretConfigError, secret_from_env, signing_key_from_env
from tests.helpers import STEPQ_CLI
from tests.http_fixtures import clean_environ, start_api


def test_a_secret_is_the_variable_or_the_file_it_names_never_both(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("  s3cret\n")
    assert secret_from_env("STEPQ_X", {}) is None
    assert secret_from_env("STEPQ_X", {"STEPQ_X": "plain"}) == "plain"
    assert secret_from_env("STEPQ_X", {"STEPQ_X_FILE": str(secret)}) == "s3cret"
    with pytest.raises(SecretConfigError, match="both STEPQ_X and STEPQ_X_FILE are set"):
        secret_from_env("STEPQ_X", {"STEPQ_X": "plain", "STEPQ_X_FILE": str(secret)})
    with pytest.raises(SecretConfigError, match=r"STEPQ_X_FILE=.*missing: cannot read it"):
        secret_from_env("STEPQ_X", {"STEPQ_X_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecretConfigError, match="the file is empty"):
        secret_from_env("STEPQ_X", {"STEPQ_X_FILE": str(tmp_path / "empty")})
    # the signing key: stepq's name first, then Inngest's, each from a file or not
    assert signing_key_from_env({"INNGEST_SIGNING_KEY_FILE": str(secret)}) == "s3cret"
    assert signing_key_from_env({"STEPQ_SIGNING_KEY": "a", "INNGEST_SIGNING_KEY_FILE": str(secret)}) == "a"


def test_every_api_secret_can_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = (
        "STEPQ_EVENT_KEYS",
        "STEPQ_SIGNING_KEY",
        "STEPQ_DASHBOARD_TOKEN",
        "STEPQ_SESSION_SECRET",
        "STEPQ_METRICS_TOKEN",
    )
    for name in names:
        monkeypatch.delenv(name, raising=False)
        (tmp_path / name).write_text(f"{name.lower()}-value\n")
        monkeypatch.setenv(f"{name}_FILE", str(tmp_path / name))
    monkeypatch.delenv("INNGEST_SIGNING_KEY", raising=False)
    settings = ApiSettings.from_env()
    assert settings.event_keys == ("stepq_event_keys-value",)
    assert settings.signing_key == "stepq_signing_key-value"
    assert settings.dashboard_token == "stepq_dashboard_token-value"
    assert settings.session_secret == "stepq_session_secret-value"
    assert settings.metrics_token == "stepq_metrics_token-value"


def test_stepq_api_reads_its_event_keys_and_metrics_token_from_files(tmp_path: Path) -> None:
    keys, token = tmp_path / "event_keys", tmp_path / "metrics_token"
    keys.write_text("key-one,key-two\n")
    token.write_text("scrape-me\n")
    api = start_api(
        tmp_path, dev=False, env={"STEPQ_EVENT_KEYS_FILE": str(keys), "STEPQ_METRICS_TOKEN_FILE": str(token)}
    )
    try:
        url = str(api.url)  # type: ignore[attr-defined]
        sent = httpx.post(f"{url}/e/key-two", json={"name": "secret/file"}, timeout=10.0)
        assert sent.status_code == 200, sent.text
        assert httpx.post(f"{url}/e/key-three", json={"name": "secret/file"}, timeout=10.0).status_code == 401
        assert httpx.get(f"{url}/metrics", timeout=10.0).status_code == 401
        scraped = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer scrape-me"}, timeout=10.0)
        assert scraped.status_code == 200
    finally:
        api.stop()

    # both the variable and its file: refused at start, naming them
    env = {**clean_environ(), "STEPQ_EVENT_KEYS": "k", "STEPQ_EVENT_KEYS_FILE": str(keys)}
    done = subprocess.run([*STEPQ_CLI, "api", "--port", "0"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "both STEPQ_EVENT_KEYS and STEPQ_EVENT_KEYS_FILE are set" in done.stderr
