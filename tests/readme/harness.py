"""Finding README.md's Python blocks, and running one: as a worker's app module or as a snippet.

A block's module keeps the block at its README line numbers (blank lines above it), so a traceback
from a block names the line of README.md it came from.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib
import inspect
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from redis.asyncio import Redis

import stepq
from stepq.runtime.queries import RunView
from tests.helpers import REDIS_URL, ROOT, TERMINAL, WorkerProcess, run_ids_for_event, wait_for_run

README = ROOT / "README.md"
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>```+)\s*(?P<lang>[\w+-]*)")
_DIRECTIVE = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<name>\S*)\s*-->\s*$")
_CONTEXT_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
PYTHON = ("python", "py", "python3")


@dataclasses.dataclass(frozen=True, slots=True)
class Block:
    """One ```python block of README.md."""

    #: The README line of the block's first line of code (1-based).
    line: int
    source: str
    #: The name of its context module in tests/readme/, from the comment before the block.
    context: str | None

    @property
    def label(self) -> str:
        return f"README.md:{self.line}"


def find_blocks(text: str) -> tuple[list[Block], list[str]]:
    """The Python blocks of a Markdown text, and the problems found on the way (a directive with no
    Python block after it, a context name that is not a module name)."""
    blocks: list[Block] = []
    problems: list[str] = []
    lines = text.splitlines()
    directive: tuple[int, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        found = _DIRECTIVE.match(line)
        if found:
            if directive is not None:
                problems.append(f"README.md:{directive[0]}: readme-test comment with no Python block after it")
            directive = (i + 1, found["name"])
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence is None:
            if line.strip() and directive is not None:
                problems.append(f"README.md:{directive[0]}: readme-test comment with no Python block after it")
                directive = None
            i += 1
            continue
        indent, ticks, lang = fence["indent"], fence["ticks"], fence["lang"]
        end = i + 1  # the closing fence: backticks only, at least as many as the opening's (CommonMark)
        while end < len(lines) and not (set(lines[end].strip()) == {"`"} and len(lines[end].strip()) >= len(ticks)):
            end += 1
        if lang in PYTHON:
            body = [text_line.removeprefix(indent) for text_line in lines[i + 1 : end]]
            context = directive[1] if directive else None
            if context is not None and not _CONTEXT_NAME.match(context):
                problems.append(f"README.md:{directive[0] if directive else i}: bad context name {context!r}")
            blocks.append(Block(line=i + 2, source="\n".join(body) + "\n", context=context))
        elif directive is not None:
            problems.append(f"README.md:{directive[0]}: readme-test comment before a {lang or 'plain'} block")
        directive = None
        i = end + 1
    return blocks, problems


def readme_blocks() -> list[Block]:
    return find_blocks(README.read_text())[0]


def module_source(block: Block) -> str:
    """A block as a module: its context's names imported, the code at its README line numbers."""
    header = f"from tests.readme.{block.context} import *  # noqa: F403\n" if block.context else ""
    padding = "\n" * max(0, block.line - 1 - header.count("\n"))
    return header + padding + block.source


class ReadmeBlock:
    """A block being tested: its module written in ``directory``, the processes and clients it
    started (stopped and closed by ``close``)."""

    def __init__(self, block: Block, directory: Path, redis: Redis) -> None:
        self.block = block
        self.directory = directory
        self.redis = redis
        self.module_name = f"readme_l{block.line}"
        self.workers: list[WorkerProcess] = []
        #: Environment variables set with ``setenv``: in the test process and in every worker.
        self.env: dict[str, str] = {}
        self._saved_env: dict[str, str | None] = {}
        self._loaded: list[ModuleType] = []
        self._namespaces: list[dict[str, Any]] = []
        self.path = directory / f"{self.module_name}.py"
        self.path.write_text(module_source(block))

    def context(self) -> ModuleType | None:
        return importlib.import_module(f"tests.readme.{self.block.context}") if self.block.context else None

    def setenv(self, name: str, value: str) -> None:
        """Set an environment variable for the block: in this process (until ``close``) and in the
        workers started after this call, as a user sets it for every process of the app."""
        self._saved_env.setdefault(name, os.environ.get(name))
        os.environ[name] = value
        self.env[name] = value

    def start_worker(self, client: str = "client", env: dict[str, str] | None = None) -> WorkerProcess:
        """A ``stepq worker`` serving the block module's ``client``, ready when this returns."""
        full_env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),  # the context modules (tests.readme.*)
            "STEPQ_REDIS_URL": REDIS_URL,
            "STEPQ_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
            **self.env,
            **(env or {}),
        }
        worker = WorkerProcess(
            self.module_name,
            len(self.workers),
            self.directory,
            full_env,
            target=f"{self.module_name}:{client}",
            cwd=self.directory,
        )
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def load(self) -> ModuleType:
        """The block imported as a module in the test process (its clients send to the test Redis)."""
        if str(self.directory) not in sys.path:
            sys.path.insert(0, str(self.directory))
        module = importlib.import_module(self.module_name)
        self._loaded.append(module)
        return module

    async def run(self) -> dict[str, Any]:
        """Execute the block as a snippet among its context's names; returns its namespace. A
        block with top-level ``await`` runs on the test's event loop, any other in a thread (so
        that it may call synchronous APIs such as ``send_sync``)."""
        namespace: dict[str, Any] = {"__name__": self.module_name}  # the module's header imports the context
        self._namespaces.append(namespace)
        code = compile(self.path.read_text(), str(README), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        if code.co_flags & inspect.CO_COROUTINE:
            await eval(code, namespace)
        else:
            await asyncio.to_thread(exec, code, namespace)
        return namespace

    async def run_of(self, function_id: str, event_id: str, statuses: Sequence[str] = TERMINAL) -> RunView:
        """The single run of ``function_id`` that ``event_id`` started, once in one of ``statuses``."""
        run_ids = await run_ids_for_event(self.redis, function_id, event_id)
        assert len(run_ids) == 1, f"event {event_id} started {len(run_ids)} runs of {function_id}, expected 1"
        return await wait_for_run(self.redis, run_ids[0], statuses)

    async def runs_for(self, event_id: str, function_id: str) -> list[str]:
        """The ids of the runs of ``function_id`` that ``event_id`` started."""
        return await run_ids_for_event(self.redis, function_id, event_id)

    async def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        # Close the clients the block made (the context's own live on with its module).
        context = self.context()
        theirs = {id(v) for v in vars(context).values()} if context else set()
        namespaces = [vars(m) for m in self._loaded] + self._namespaces
        for client in {id(v): v for ns in namespaces for v in ns.values() if isinstance(v, stepq.Client)}.values():
            if id(client) not in theirs:
                await client.aclose()
        for module in self._loaded:
            sys.modules.pop(module.__name__, None)
        if str(self.directory) in sys.path:
            sys.path.remove(str(self.directory))
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
