"""Where the peers are installed, how to install them (``python -m bench.peers --setup``), their versions.

Everything goes under ``~/.cache/stepq-bench-peers/`` (``$STEPQ_PEERS_DIR`` to move it): outside the
repository, so that linters never crawl it and every worktree shares one install. There: a venv with
the peers' Python packages, separate from stepq's (Celery needs redis-py >= 6.4, stepq pins < 6), and
an npm prefix with the Restate server (the npm package carries the Linux binary). PostgreSQL is not
installed here: DBOS uses the one at ``--pg-url`` (``apt-get install postgresql`` if missing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

#: The peers' Python packages, pinned to the major versions measured before (bench/README.md).
PIP_PACKAGES = (
    "dbos==3.4.*",
    "celery[redis]==5.7.*",
    "restate-sdk==1.3.*",
    "hypercorn==0.18.*",
    "httpx>=0.27",
    "msgpack>=1.0",
)
NPM_PACKAGE = "@restatedev/restate-server@1.7"


def peers_dir() -> Path:
    explicit = os.environ.get("STEPQ_PEERS_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "stepq-bench-peers"


def venv_python() -> Path:
    return peers_dir() / "venv" / "bin" / "python"


def restate_binary() -> Path | None:
    """The server binary the npm package installed for this platform, if any."""
    modules = peers_dir() / "npm" / "node_modules" / "@restatedev"
    found = sorted(modules.glob("restate-server-*/bin/restate-server")) if modules.is_dir() else []
    return found[0] if found else None


def setup() -> int:
    """Create the peers' venv and npm prefix; install or upgrade within the pins. Exit status."""
    base = peers_dir()
    base.mkdir(parents=True, exist_ok=True)
    status = 0
    if not venv_python().exists():
        print(f"[peers] creating {base / 'venv'} with {sys.executable}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    print(f"[peers] pip install {' '.join(PIP_PACKAGES)}", flush=True)
    pip = subprocess.run([str(venv_python()), "-m", "pip", "install", "-q", *PIP_PACKAGES])
    status |= pip.returncode
    npm = shutil.which("npm")
    if npm is None:
        print("[peers] no npm on PATH: Restate will be skipped (apt-get install npm)", flush=True)
    else:
        print(f"[peers] npm install {NPM_PACKAGE} into {base / 'npm'}", flush=True)
        (base / "npm").mkdir(exist_ok=True)
        result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(base / "npm"), NPM_PACKAGE])
        status |= result.returncode
    print(f"[peers] set-up {'done' if status == 0 else 'FAILED'}; restate-server: {restate_binary()}", flush=True)
    return 1 if status else 0


def package_version(name: str) -> str | None:
    """A package's version in the peers' venv (None when it is not installed there)."""
    if not venv_python().exists():
        return None
    code = f"import importlib.metadata as m; print(m.version({name!r}))"
    try:
        out = subprocess.run([str(venv_python()), "-c", code], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def binary_version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
