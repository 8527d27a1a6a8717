"""Issue 9: the Python examples of "Working with Loops in Inngest" run on stepq as written, with only
``import inngest`` changed to ``import stepq as inngest``.

The examples are read from the document itself (tests/reference/loops-in-inngest.md, a copy of the
seed document shared/reference/loops-in-inngest.md), written to modules, and served by a real
``stepq worker`` on the test Redis. A snippet leaves some names to its surroundings; each module
gets a preamble that supplies them, and nothing in the example's own text changes:

1. ``@inngest_client.create_function(fn_id=...)``, no imports: the preamble imports stepq as inngest
   and builds ``inngest_client = inngest.Inngest(app_id=...)``.
2. ``import inngest`` and ``from src.inngest.client import inngest_client``: the import becomes
   ``import stepq as inngest``, and a package ``src/inngest/client.py`` defines the client.
3. ``@inngest.create_function(...)`` with ``inngest.TriggerEvent`` and ``inngest.Context``: the page
   uses one name for the client and for the module (inngest-py has no module-level
   ``create_function``), so the preamble's ``inngest`` is stepq's namespace with the client's
   ``create_function``; ``database`` and ``shopify`` come from tests/apps/loops_doc_fakes.py.

Example 3 cannot complete, on Inngest or on stepq: a step's result comes back from its memo as JSON
(a dict), so ``page.products`` raises ``AttributeError`` on the re-entry after the first page (the
page's TypeScript version reads the same field of a plain object; tests/apps/loops.py runs a
corrected version). The test checks exactly that outcome: the first page fetched once, never again
across the function's retries, and the run failed with that error.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

import stepq
from tests.helpers import (
    REDIS_URL,
    ROOT,
    STEPQ_CLI,
    LoggedProcess,
    WorkerProcess,
    read_lines,
    start_run,
    wait_for_run,
)

DOC = ROOT / "tests" / "reference" / "loops-in-inngest.md"
SEED = ROOT.parent / "shared" / "reference" / "loops-in-inngest.md"
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_examples() -> list[str]:
    return [match.group(1) for match in _PYTHON_BLOCK.finditer(DOC.read_text())]


def as_stepq(source: str) -> str:
    """The one change the examples get: ``import inngest`` becomes ``import stepq as inngest``."""
    return re.sub(r"^import inngest$", "import stepq as inngest", source, flags=re.MULTILINE)


class ExampleWorker(WorkerProcess):
    """A ``stepq worker`` serving ``module:attribute`` from a directory on ``PYTHONPATH``."""

    def __init__(self, reference: str, directory: Path, env: dict[str, str]) -> None:
        self.app = reference
        argv = [*STEPQ_CLI, "worker", reference, "--redis-url", REDIS_URL]
        LoggedProcess.__init__(self, f"worker-{reference.partition(':')[0]}", argv, directory, env)


ServeExample = Callable[[str, dict[str, str]], ExampleWorker]


@pytest.fixture
def serve_example(redis: Redis, tmp_path: Path) -> Iterator[ServeExample]:
    """``serve_example("module:attribute", {relative path: source})``: write the files under a fresh
    directory and start a worker on them; it is stopped at teardown."""
    started: list[ExampleWorker] = []

    def start(reference: str, files: dict[str, str]) -> ExampleWorker:
        code = tmp_path / "code"
        for relative, source in files.items():
            path = code / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
        env = {
            **os.environ,
            "PYTHONPATH": str(code),
            "PYTHONUNBUFFERED": "1",
            "STEPQ_LOG_LEVEL": "info",
            "STEPQ_REDIS_URL": REDIS_URL,
            "STEPQ_TEST_SHOP_LOG": str(tmp_path / "shop.log"),
        }
        worker = ExampleWorker(reference, tmp_path, env)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


def test_the_document_holds_three_python_examples_and_matches_the_seed() -> None:
    examples = python_examples()
    assert len(examples) == 3, examples
    assert 'fn_id="simple-function"' in examples[0]
    assert "from src.inngest.client import inngest_client" in examples[1]
    assert "shopify-product-import" in examples[2]
    if SEED.exists():  # the shared seed document sits beside the repository in the project's workspace
        assert DOC.read_text() == SEED.read_text(), "tests/reference/loops-in-inngest.md differs from the seed"


async def test_example_1_prints_hello_on_every_invocation(
    redis: Redis, sender: stepq.Client, serve_example: ServeExample
) -> None:
    preamble = 'import stepq as inngest\n\ninngest_client = inngest.Inngest(app_id="doc-loops-1")\n\n'
    worker = serve_example(
        "doc_example_1:inngest_client", {"doc_example_1.py": preamble + as_stepq(python_examples()[0])}
    )

    run_id = await start_run(sender, redis, "simple-function", "test/simple.function", {})
    view = await wait_for_run(redis, run_id)

    assert view.status == "completed", view.error
    # As the page says: "hello" four times, once per entry, and each step's letter once.
    assert worker.stdout().splitlines() == ["hello", "a", "hello", "b", "hello", "c", "hello"]
    assert [s.name for s in view.steps] == ["a", "b", "c"]


async def test_example_2_prints_hello_once(redis: Redis, sender: stepq.Client, serve_example: ServeExample) -> None:
    source = as_stepq(python_examples()[1])
    assert "import stepq as inngest\n" in source and "import inngest\n" not in source
    client_module = 'import stepq as inngest\n\ninngest_client = inngest.Inngest(app_id="doc-loops-2")\n'
    worker = serve_example(
        "doc_example_2:inngest_client",
        {
            "doc_example_2.py": source,
            "src/__init__.py": "",
            "src/inngest/__init__.py": "",
            "src/inngest/client.py": client_module,
        },
    )

    run_id = await start_run(sender, redis, "simple-function", "test/simple.function", {})
    view = await wait_for_run(redis, run_id)

    assert view.status == "completed", view.error
    assert worker.stdout().splitlines() == ["hello", "a", "b", "c"]  # the page's expected output
    assert [s.name for s in view.steps] == ["hello", "a", "b", "c"]


async def test_example_3_fetches_the_first_page_once_and_fails_on_attribute_access(
    redis: Redis, sender: stepq.Client, serve_example: ServeExample, tmp_path: Path
) -> None:
    preamble = textwrap.dedent(
        """\
        import types

        import stepq

        from tests.apps.loops_doc_fakes import database, shopify

        inngest_client = stepq.Inngest(app_id="doc-loops-3")
        # The page calls the client `inngest` too: stepq's names, with the client's create_function.
        inngest = types.SimpleNamespace(**vars(stepq), create_function=inngest_client.create_function)

        """
    )
    serve_example("doc_example_3:inngest_client", {"doc_example_3.py": preamble + as_stepq(python_examples()[2])})

    run_id = await start_run(
        sender, redis, "shopify-product-import", "shopify/import.requested", {"store_id": "store-1"}
    )
    view = await wait_for_run(redis, run_id, timeout=120)

    assert view.status == "failed"
    assert "'dict' object has no attribute 'products'" in str(view.error), view.error
    [step] = view.steps
    assert step.name == "fetch-products-None" and step.done and step.attempts == 1
    assert len(step.memo["data"]["products"]) == 50
    assert step.memo["data"]["products"][0]["session"] == "session-for-store-1"
    # The function was retried (5 attempts); the memoized page was fetched once all the same.
    assert read_lines(tmp_path / "shop.log") == ["None"]
