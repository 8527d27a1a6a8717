"""The contexts of README.md's Python blocks, which tests/test_readme.py runs.

Every ```python block in README.md is a test. A block preceded by ``<!-- readme-test: NAME -->``
runs with the context in ``tests/readme/NAME.py``:

- ``__all__``: the names the block uses without defining them (stand-ins for the user's own code,
  like ``fetch_page``); the block's module starts with ``from tests.readme.NAME import *``.
- ``async def check(block: ReadmeBlock) -> None``: runs the block for real and asserts what it
  did: ``block.start_worker()`` serves the block's client from a worker process,
  ``block.load()`` imports the block in the test process (to send events with its client),
  ``await block.run()`` executes it as a snippet (top-level ``await`` allowed), and
  ``await block.run_of(function_id, event_id)`` waits for the run an event started, and
  ``block.setenv(name, value)`` sets a variable for the test process and the workers.

A block without the comment is executed as a snippet, and must need nothing it does not define.
See ``tests/readme/harness.py``.
"""
