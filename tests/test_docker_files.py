"""The container files keep what a review fixed (no Docker needed: the files are read, not run).

- docker-compose.yml: every service's log is rotated; Redis is healthy on PONG only, never evicts,
  takes its password from a Docker secret; each worker is healthy on its own ``/readyz``; no
  password in an environment variable or a URL; the example app does not start a second import on
  every ``up``; a worker's stop grace outlasts its drain.
- Dockerfile and .dockerignore: a pinned base, every pip install after the download offline and
  hash-checked, a build context that holds what the Dockerfile copies and not .git, .venv or tests.
- deploy/docker/*.lock pin, with hashes, every requirement of pyproject.toml (and of the pinned
  packages this venv has installed at the same version), at versions the requirements allow.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: The image's interpreter: CPython 3.11 on Linux, any patch release (Debian bookworm's is 3.11.2,
#: the official image's 3.11.15): a requirement whose marker holds for any of them must be pinned.
IMAGE_ENVS: list[dict[str, str]] = [
    {
        **{key: str(value) for key, value in default_environment().items()},
        "python_version": "3.11",
        "python_full_version": f"3.11.{patch}",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "extra": "",
    }
    for patch in range(30)
]
EXACT_TAG = re.compile(r":\d+\.\d+\.\d+(-[a-z0-9.-]+)?(@sha256:[0-9a-f]{64})?$")


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_rotates_its_log(name: str) -> None:
    logging = SERVICES[name].get("logging")
    assert logging, f"service {name} has no logging limits: its log would grow without end"
    assert logging["driver"] in ("json-file", "local")
    size = logging["options"]["max-size"]
    assert re.fullmatch(r"\d+[km]", size), f"{name}: max-size {size!r}"
    assert 1 <= int(logging["options"]["max-file"]) <= 10


def test_redis_is_healthy_on_pong_only() -> None:
    check = healthcheck_text(SERVICES["redis"])
    # redis-cli exits 0 on -LOADING and -NOAUTH: its exit code alone proves nothing
    assert "redis-cli" in check and "ping" in check.lower()
    assert "grep -qx PONG" in check, check
    assert "REDISCLI_AUTH" in check  # a password-protected Redis answers NOAUTH otherwise


def test_redis_never_evicts_and_persists() -> None:
    redis = SERVICES["redis"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in redis["volumes"] if v.startswith("./")}
    config_path = "/usr/local/etc/redis/redis.conf"
    assert config_path in " ".join(redis["entrypoint"]), "Redis must start with the mounted configuration"
    config = (ROOT / mounts[config_path]).read_text()
    directives = {
        line.split()[0]: line.split()[1:] for line in config.splitlines() if line.strip() and not line.startswith("#")
    }
    assert directives["maxmemory-policy"] == ["noeviction"]
    assert directives["appendonly"] == ["yes"]
    assert "requirepass" not in directives, "the password belongs in the secret, not the repository"


def test_redis_password_is_a_secret_and_on_no_command_line() -> None:
    redis = SERVICES["redis"]
    assert "redis_password" in redis["secrets"]
    script = redis["entrypoint"][-1]
    assert "cat /run/secrets/redis_password" in script
    # requirepass is fed on standard input (`redis-server CONF -`), not as an argument
    assert re.search(r"redis-server \S+ - <<", script), script
    assert not re.search(r"--requirepass", script)
    for name, secret in COMPOSE["secrets"].items():
        assert secret == {"file": f"./secrets/{name}"}, f"secret {name} must be a file under secrets/"
    assert "secrets/" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_no_password_in_plain_environment(name: str) -> None:
    env = environment(SERVICES[name])
    for key, value in env.items():
        assert not (("PASSWORD" in key or "SECRET" in key or "TOKEN" in key) and not key.endswith("_FILE")), (
            f"{name}: {key} holds a secret in plain environment; use a *_FILE variable and a Docker secret"
        )
        assert not re.search(r"://[^/@\s]*:[^/@\s]*@", value), f"{name}: {key} carries a password in a URL"
        if key.endswith("_FILE") and value.startswith("/run/secrets/"):
            assert value.removeprefix("/run/secrets/") in SERVICES[name].get("secrets", []), (
                f"{name}: {key} names a secret the service is not given"
            )
    if "STEPQ_REDIS_URL" in env:
        assert env["STEPQ_REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password"


def test_each_worker_is_healthy_on_its_own_readiness() -> None:
    worker = SERVICES["worker"]
    port = environment(worker)["STEPQ_HEALTH_PORT"]
    check = healthcheck_text(worker)
    assert f"http://127.0.0.1:{port}/readyz" in check
    # not a key in Redis that any one worker sets for all of them
    assert "redis" not in check.lower() and "hexists" not in check


def test_the_api_is_healthy_on_health_and_published_on_loopback_only() -> None:
    api = SERVICES["api"]
    assert "http://127.0.0.1:8288/health" in healthcheck_text(api)
    assert api["ports"] == ["127.0.0.1:8288:8288"], "the API has no TLS: publish it on the host's loopback"
    env = environment(api)
    assert env["STEPQ_EVENT_KEYS_FILE"] == "/run/secrets/event_keys" and "STEPQ_EVENT_KEYS" not in env


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", str(text))
    assert match, text
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


def test_a_worker_stops_after_its_drain_not_during_it() -> None:
    worker = SERVICES["worker"]
    drain = float(environment(worker)["STEPQ_DRAIN_GRACE"])
    assert _seconds(worker["stop_grace_period"]) >= drain + 5
    assert worker["init"] is True  # SIGTERM reaches stepq (PID 1 forwards it)


def test_the_example_app_does_not_send_again_on_every_up() -> None:
    app = SERVICES["app"]
    command = app["command"]
    assert "example" in app.get("profiles", []), "a plain `docker compose up` must not send the example event"
    assert "--id" in command and command[command.index("--id") + 1], "the event needs a fixed idempotency id"
    assert app["restart"] == "no"


def test_images_are_pinned() -> None:
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.M)
    assert default and EXACT_TAG.search(default[1]), "the Dockerfile's base needs an exact version"
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms), froms
    redis_image = SERVICES["redis"]["image"]
    fallback = re.fullmatch(r"\$\{STEPQ_REDIS_IMAGE:-(\S+)\}", redis_image)
    assert fallback and EXACT_TAG.search(fallback[1]), redis_image


def _run_lines(dockerfile: str) -> list[str]:
    """Each RUN instruction's shell commands, continuation lines joined, split at &&."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile)
    commands = []
    for line in joined.splitlines():
        if line.startswith("RUN "):
            commands += [c.strip() for c in line[4:].split("&&")]
    return commands


def test_pip_downloads_once_hash_checked_and_installs_offline() -> None:
    pips = [c for c in _run_lines(DOCKERFILE) if " pip " in f" {c} " or c.split()[0].endswith("/pip")]
    downloads = [c for c in pips if shlex.split(c)[1] == "download"]
    assert len(downloads) == 1 and "--require-hashes" in downloads[0]
    for command in pips:
        verb = shlex.split(command)[1]
        if verb in ("install", "wheel"):
            assert "--no-index" in command, f"this pip command may reach the network: {command}"
        if verb == "install" and "-r" in shlex.split(command):
            assert "--require-hashes" in command, command


def _dockerignore() -> list[str]:
    return [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in "#"]


def _in_context(path: str) -> bool:
    """Whether ``path`` reaches the build context (the last matching pattern decides, as Docker does)."""
    included = True
    for pattern in _dockerignore():
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, pattern.replace("**/", "*/")) for prefix in prefixes) or (
            pattern.startswith("**/") and any(fnmatch.fnmatchcase(p, pattern[3:]) for p in parts)
        ):
            included = negated
    return included


def test_build_context_has_what_the_dockerfile_copies_and_nothing_private() -> None:
    sources = [src for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE, re.M) for src in line.split()[:-1]]
    assert "pyproject.toml" in sources and "sdk" in sources
    for source in sources:
        assert _in_context(source), f"the Dockerfile copies {source}, which .dockerignore leaves out"
    for private in (".git", ".venv", "build", "tests", "bench", "secrets/redis_password", "sdk/__pycache__"):
        assert not _in_context(private), f".dockerignore lets {private} into the build context"


def _lock(name: str) -> dict[str, tuple[Version, int]]:
    """``{package: (version, number of hashes)}`` of a lock file."""
    text = (ROOT / "deploy" / "docker" / name).read_text()
    out: dict[str, tuple[Version, int]] = {}
    for block in re.split(r"\n(?=\S)", text):
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if match:
            out[str(canonicalize_name(match[1]))] = (Version(match[2]), block.count("--hash=sha256:"))
    return out


LOCK = _lock("requirements.lock")
BUILD_LOCK = _lock("build.lock")


def _check_pinned(requirement: Requirement, lock: dict[str, tuple[Version, int]], why: str) -> None:
    name = canonicalize_name(requirement.name)
    assert name in lock, f"{name} ({why}) is not pinned in the image's lock: run scripts/lock-image"
    version, hashes = lock[name]
    assert requirement.specifier.contains(version, prereleases=True), (
        f"the lock pins {name}=={version}, but {why} asks for {requirement}: run scripts/lock-image"
    )
    assert hashes >= 1, f"{name} has no hash in the lock"


@pytest.mark.parametrize("line", PYPROJECT["project"]["dependencies"])
def test_the_lock_pins_every_dependency_of_pyproject(line: str) -> None:
    requirement = Requirement(line)
    if requirement.marker and not any(requirement.marker.evaluate(env) for env in IMAGE_ENVS):
        return
    _check_pinned(requirement, LOCK, "pyproject.toml")
    for extra in requirement.extras:  # e.g. redis[hiredis] -> hiredis
        dist = metadata.distribution(requirement.name)
        for needed in map(Requirement, dist.requires or []):
            only_with_extra = needed.marker is not None and any(
                needed.marker.evaluate({**env, "extra": extra}) and not needed.marker.evaluate(env)
                for env in IMAGE_ENVS
            )
            if only_with_extra:
                _check_pinned(needed, LOCK, f"{requirement.name}[{extra}]")


def test_the_build_lock_pins_the_build_backend() -> None:
    for line in PYPROJECT["build-system"]["requires"]:
        _check_pinned(Requirement(line), BUILD_LOCK, "build-system.requires")


def test_the_lock_is_closed_under_dependencies() -> None:
    """Every requirement of a pinned package (as installed here at the pinned version) is pinned too."""
    checked = 0
    for name, (version, _) in LOCK.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if Version(dist.version) != version:
            continue
        checked += 1
        for needed in map(Requirement, dist.requires or []):
            if needed.marker is None or any(needed.marker.evaluate(env) for env in IMAGE_ENVS):
                _check_pinned(needed, LOCK, f"{name}=={version}")
    assert checked >= len(LOCK) // 2, "too few locked packages are installed here at their pinned version to check"


@pytest.mark.parametrize(
    "script", ["deploy/docker/local-base.sh", "deploy/docker/verify-compose.sh", "scripts/lock-image"]
)
def test_the_container_scripts_parse(script: str) -> None:
    """The scripts CI cannot run (they need root, debootstrap, Docker or PyPI) at least parse."""
    done = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert os.access(ROOT / script, os.X_OK), f"{script} is not executable"
