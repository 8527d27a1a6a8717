"""README's quickstart module (``tasks.py``): served by a worker, started by ``stepq send`` as the
README's shell lines do, and shown by ``stepq run``."""

from __future__ import annotations

import json
import os
import subprocess
from typing import TYPE_CHECKING

from tests.helpers import REDIS_URL, STEPQ_CLI

if TYPE_CHECKING:
    from tests.readme.harness import ReadmeBlock

__all__: list[str] = []


def stepq(block: ReadmeBlock, *args: str) -> str:
    """A ``stepq`` command run in the block's directory, with STEPQ_REDIS_URL as the README sets it."""
    env = {**os.environ, "STEPQ_REDIS_URL": REDIS_URL}
    done = subprocess.run([*STEPQ_CLI, *args], cwd=block.directory, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"stepq {' '.join(args)}: {done.stderr}"
    return done.stdout


async def check(block: ReadmeBlock) -> None:
    block.start_worker()

    [event_id] = json.loads(stepq(block, "send", "demo/greet", "--data", '{"name": "ada"}'))["ids"]

    view = await block.run_of("greet", event_id)
    assert (view.status, view.output) == ("completed", "hello ada"), view
    steps = {step.name: step for step in view.steps}
    assert steps["look-up"].memo == {"data": "ada"}
    pause = steps["pause"]
    assert pause.done
    shown = stepq(block, "run", view.run_id)
    assert 'output    "hello ada"' in shown.splitlines(), shown
