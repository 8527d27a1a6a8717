"""Packaging: stepq installs as one import package, ``stepq``, and nothing else.

An app with packages of its own named ``sdk``, ``runtime`` and ``workers`` (common folder names)
must run under ``stepq worker`` and send events, from the editable install the tests run in and
from a wheel built from this tree and installed into a fresh venv. The processes run in the app's
directory, never the repository's, so the repository's folders of the same names cannot stand in
for the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.helpers import REDIS_URL, ROOT, WorkerProcess, run_ids_for_event, wait_for_run

# The app: its own `sdk` and `runtime` packages, its functions in its own `workers` package.
APP_FILES = {
    "sdk/__init__.py": '''
"""The app's own package named sdk (a client for some API, say)."""


def shout(text: str) -> str:
    return text.upper() + "!"
''',
    "runtime/__init__.py": '''
"""The app's own package named runtime."""

GREETING = "hello from the app's runtime"
''',
    "workers/__init__.py": "",
    "workers/tasks.py": """
import stepq as inngest
from runtime import GREETING
from sdk import shout

client = inngest.Client("pkg-app")


@client.create_function(id="greet", trigger=inngest.TriggerEvent(event="pkg/greet"))
async def greet(ctx: inngest.Context) -> dict[str, str]:
    who = ctx.event.data["who"]
    text = await ctx.step.run("greet", lambda: shout(f"{GREETING}, {who}"))
    return {"text": text, "stepq": inngest.__file__}
""",
    "send.py": """
import asyncio
import json
import sys

import runtime  # the app's, imported before the client looks up its Redis transport
import stepq as inngest
from workers.tasks import client


async def main() -> list[str]:
    try:
        return await client.send(inngest.Event(name="pkg/greet", data={"who": sys.argv[1]}))
    finally:
        await client.aclose()


print(json.dumps({"ids": asyncio.run(main()), "stepq": inngest.__file__, "runtime": runtime.__file__}))
""",
}

# What a build must not pick up from the working tree (in-place builds would also leave build/
# and *.egg-info behind in it, and a stale build/lib could slip old modules into the wheel).
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"
)


def run(
    argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{argv} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the working tree, with the dev venv's setuptools (no download)."""
    where = tmp_path_factory.mktemp("wheel")
    source = where / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--wheel-dir", str(where), str(source)])
    [built] = where.glob("stepq-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with the wheel installed; returns its bin directory.

    stepq's own dependencies come from the dev venv through a directory of links to its
    site-packages entries, less everything of stepq's (its editable install's .pth and
    dist-info): stepq itself can only be imported from the wheel.
    """
    where = tmp_path_factory.mktemp("venv")
    venv = where / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)])
    dev_site = Path(sysconfig.get_path("purelib"))
    deps = where / "deps"
    deps.mkdir()
    for entry in dev_site.iterdir():
        if entry.name.startswith(("stepq", "__editable__")) or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry)
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    (site / "dev-venv-deps.pth").write_text(f"{deps}\n")
    return venv / "bin"


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [info] = {n.split("/")[0] for n in names if ".dist-info/" in n}
        top_level = archive.read(f"{info}/top_level.txt").decode().split()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        record = archive.read(f"{info}/RECORD").decode().splitlines()

    assert {n.split("/")[0] for n in names} == {"stepq", info}
    assert top_level == ["stepq"]
    assert {line.split(",")[0].split("/")[0] for line in record} == {"stepq", info}
    assert "stepq = stepq.workers.cli:main" in entry_points
    assert "redis = stepq.runtime.transport:RedisTransport" in entry_points
    # files that are not Python: the Lua scripts and the typing marker
    assert "stepq/py.typed" in names
    assert "stepq/runtime/lua/prelude.lua" in names
    assert "stepq/runtime/lua/apply_plan.lua" in names
    # the dashboard's templates and static files (htmx is vendored: no Node toolchain needed)
    assert "stepq/runtime/dashboard/templates/base.html" in names
    assert "stepq/runtime/dashboard/templates/_run_body.html" in names
    assert "stepq/runtime/dashboard/static/htmx.min.js" in names
    assert "stepq/runtime/dashboard/static/dashboard.css" in names


def test_the_wheel_installs_nothing_but_stepq(wheel: Path, wheel_venv: Path) -> None:
    python = str(wheel_venv / "python")
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    name, version = wheel.name.split("-")[:2]

    installed = {p.name for p in site.iterdir()} - {"dev-venv-deps.pth", "__pycache__"}

    assert installed == {"stepq", f"{name}-{version}.dist-info"}
    assert (wheel_venv / "stepq").exists()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Path]:
    """The app's directory, with its own sdk/, runtime/ and workers/ packages."""
    root = tmp_path / "app"
    for name, text in APP_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text.lstrip())
    yield root


@pytest.mark.parametrize("install", ["editable", "wheel"])
async def test_an_app_with_its_own_sdk_runtime_and_workers_packages_runs(
    install: str, app: Path, redis: Redis, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    bin_dir = Path(sys.executable).parent if install == "editable" else request.getfixturevalue("wheel_venv")
    # Only what a user's shell would hold: no PYTHONPATH that could reach the repository.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"STEPQ_REDIS_URL": REDIS_URL, "STEPQ_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1"}

    worker = WorkerProcess(
        f"pkg-{install}", 0, tmp_path, env, target="workers.tasks:client", command=[str(bin_dir / "stepq")], cwd=app
    )
    try:
        worker.wait_ready()
        sent = json.loads(run([str(bin_dir / "python"), "send.py", "ada"], cwd=app, env=env).stdout)
        [run_id] = await run_ids_for_event(redis, "greet", sent["ids"][0])
        view = await wait_for_run(redis, run_id)
    finally:
        worker.stop()

    assert view.status == "completed", f"{view}\n{worker.stderr()}"
    assert view.output["text"] == "HELLO FROM THE APP'S RUNTIME, ADA!"
    assert sent["runtime"] == str(app / "runtime" / "__init__.py")
    if install == "wheel":  # stepq came from the wheel, in the worker and in the sender
        venv = bin_dir.parent
        assert Path(view.output["stepq"]).is_relative_to(venv), view.output["stepq"]
        assert Path(sent["stepq"]).is_relative_to(venv), sent["stepq"]
    else:
        assert not Path(view.output["stepq"]).is_relative_to(app)
