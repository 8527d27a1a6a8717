"""README.md runs: every Python block in it is executed, most with a real worker and Redis.

How a block is run is set by the comment before it (see tests/readme/__init__.py and README's
"Development" section): with a context, the context's ``check`` runs it and asserts what it did;
without one, the block is executed as a snippet and must not fail.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import pytest
from redis.asyncio import Redis

from tests.helpers import REDIS_URL, ROOT
from tests.readme.harness import README, Block, ReadmeBlock, find_blocks, module_source, readme_blocks

Check = Callable[[ReadmeBlock], Awaitable[None]]


def test_every_readme_test_comment_is_attached_to_a_python_block() -> None:
    blocks, problems = find_blocks(README.read_text())
    assert problems == []
    assert blocks, "README.md has no Python block"
    for block in blocks:
        if block.context is not None:
            assert (README.parent / "tests" / "readme" / f"{block.context}.py").exists(), (
                f"{block.label}: no context module tests/readme/{block.context}.py"
            )


def test_the_collector_finds_blocks_comments_and_stray_comments() -> None:
    text = "\n".join(
        [
            "```python",
            "a = 1",
            "```",
            "<!-- readme-test: ctx -->",
            "",
            "```py",
            "b = 2",
            "```",
            "<!-- readme-test: lost -->",
            "some prose",
            "<!-- readme-test: shell -->",
            "```sh",
            "ls",
            "```",
            "- a list:",
            "  ```python",
            "  c = 3",
            "  ```",
            "````markdown",
            "<!-- readme-test: shown -->",
            "```python",
            "d = 4",
            "```",
            "````",
        ]
    )
    blocks, problems = find_blocks(text)
    assert blocks == [Block(2, "a = 1\n", None), Block(7, "b = 2\n", "ctx"), Block(17, "c = 3\n", None)]
    assert problems == [
        "README.md:9: readme-test comment with no Python block after it",
        "README.md:11: readme-test comment before a sh block",
    ]


@pytest.mark.parametrize("block", readme_blocks(), ids=lambda b: b.label)
async def test_readme_block(block: Block, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Clients made in this process (by a context, or a block loaded here) use the test database.
    monkeypatch.setenv("STEPQ_REDIS_URL", REDIS_URL)
    running = ReadmeBlock(block, tmp_path, redis)
    try:
        if block.context is None:
            await running.run()
        else:
            context = importlib.import_module(f"tests.readme.{block.context}")
            check = getattr(context, "check", None)
            assert check is not None, f"tests/readme/{block.context}.py has no check(block)"
            await cast(Check, check)(running)
    finally:
        await running.close()


def test_every_readme_block_passes_a_users_mypy_strict(tmp_path: Path) -> None:
    """The README's code is what users copy: it must type-check as they would check it (``mypy
    --strict``, outside this repository's configuration). Top-level ``await`` is allowed, as the
    blocks show code from inside an async app; names a block takes from its context are typed there."""
    files = []
    for block in readme_blocks():
        path = tmp_path / f"readme_l{block.line}.py"
        path.write_text(module_source(block))
        files.append(path.name)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--disable-error-code",
            "top-level-await",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            *files,
        ],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(ROOT)},  # the context modules (tests.readme.*)
        capture_output=True,
        text=True,
        timeout=300,
    )
    # A block's module keeps README's line numbers: name the README in the report.
    report = re.sub(r"readme_l\d+\.py:", "README.md:", result.stdout)
    assert result.returncode == 0, report
