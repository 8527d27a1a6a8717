"""A revision of stepq's code, exported to be benchmarked beside the working tree's.

The repository's three folders install as one package (``sdk/`` is ``stepq``, ``runtime/`` is
``stepq.runtime``, ``workers/`` is ``stepq.workers``): an exported tree is only importable as
``stepq`` once laid out that way, first on ``PYTHONPATH`` (ahead of the editable install).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from bench.common import REPO_ROOT, BenchError

#: Where each folder of the repository goes in the package.
PACKAGE_DIRS = {"sdk": "stepq", "runtime": "stepq/runtime", "workers": "stepq/workers"}


def export_package(revision: str, into: Path) -> Path:
    """``revision``'s sdk/, runtime/ and workers/ laid out as the ``stepq`` package under ``into``
    (put ``into`` first on ``PYTHONPATH`` to run that code)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, *PACKAGE_DIRS], cwd=REPO_ROOT, capture_output=True
    )
    if archive.returncode != 0:
        raise BenchError(f"git archive {revision} failed: {archive.stderr.decode(errors='replace')}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        for member in tar.getmembers():
            top, _, rest = member.name.partition("/")
            if top in PACKAGE_DIRS and rest:
                member.name = f"{PACKAGE_DIRS[top]}/{rest}"
                tar.extract(member, into, filter="data")
    return into
