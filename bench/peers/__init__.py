"""The side-by-side peers benchmark: ``python -m bench.peers`` (see bench/README.md).

The same four workloads on stepq and on its peers (Restate, DBOS, Celery, raw arq), interleaved in
rounds, each system at its default durability. The orchestrator (``bench.peers.__main__``) runs in
stepq's venv and starts every server, worker and driver as a process of its own; the peers' code
(``*_app.py`` modules) runs in a separate venv created by ``python -m bench.peers --setup``, so
stepq's own dependencies never change.
"""
