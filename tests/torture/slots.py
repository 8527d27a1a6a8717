"""Which Redis Cluster slots each script call touches, read with MONITOR while the runs go on.

Every write on a step's path is one Lua script, and on a Redis Cluster a script may touch the keys of
one slot only (``runtime/shards.py``). MONITOR shows each script call (``EVALSHA``, with its KEYS)
followed at once by the commands the script ran (``[<db> lua]``): scripts run atomically, so nothing
else comes between. The audit groups them and lists every call whose keys span more than one slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.crc import key_slot

from stepq.runtime import keys, scripts, shards
from stepq.runtime.connection import connect
from stepq.runtime.ingest import batch_script
from stepq.workers.embedded import EmbeddedRedis
from tests import monitor

#: Scripts allowed to span slots, and why: none. The event ingest writes one shard (its batch's) and
#: crosses to the others through that shard's outbox (runtime/outbox.py), as every script does.
CROSS_SLOT: dict[str, str] = {}
#: Keys a script may read beside its slot's, and why: on a Redis of one shard the ingest checks the
#: registry's version in its script (a cluster has 32 shards, and there the ingest does not read it).
ALSO_READ = {"ingest_events": {keys.FUNCTIONS_VERSION.encode()}}
#: Commands the scripts run whose keys are not just their first argument.
_ALL_KEYS = {"DEL", "EXISTS"}
_TWO_KEYS = {"RENAME"}
_NO_KEY = {"TIME"}


def _script_names() -> dict[str, str]:
    sources = {name: scripts.source(name) for name in scripts.SCRIPT_NAMES}
    sources["ingest_events"] = batch_script()
    return {hashlib.sha1(text.encode()).hexdigest(): name for name, text in sources.items()}


@dataclasses.dataclass(slots=True)
class Call:
    script: str
    keys: set[bytes] = dataclasses.field(default_factory=set)

    def slots(self) -> set[int]:
        allowed = ALSO_READ.get(self.script, set()) if shards.SHARD_COUNT == 1 else set()
        return {key_slot(key) for key in self.keys - allowed}


class SlotAudit:
    """Follows MONITOR of one Redis database in a thread (reconnecting after a Redis restart)."""

    def __init__(self, port: int, db: int = 0) -> None:
        self.port, self.db = port, str(db).encode()
        self.names = _script_names()
        self.calls: Counter[str] = Counter()
        self.spans: list[Call] = []
        self._current: Call | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="slot-audit", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._close()

    def violations(self) -> list[str]:
        """Script calls that touched keys of more than one slot (``CROSS_SLOT`` scripts aside)."""
        out = []
        for call in self.spans:
            if call.script not in CROSS_SLOT:
                keys = sorted(k.decode(errors="backslashreplace") for k in call.keys)
                out.append(f"{call.script} touched {len(call.slots())} slots: {keys[:8]}")
        return out

    # -- reading --------------------------------------------------------------------------------------

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"MONITOR\r\n")
                    buffer = b""
                    while not self._stop.is_set():
                        try:
                            chunk = sock.recv(1 << 20)
                        except TimeoutError:
                            continue
                        if not chunk:
                            break  # Redis restarted: connect again
                        *lines, buffer = (buffer + chunk).split(b"\r\n")
                        for line in lines:
                            self._read(line)
            except OSError:
                time.sleep(0.2)
            self._close()

    def _read(self, line: bytes) -> None:
        parsed = monitor.parse(line)
        if parsed is None or parsed[0] != self.db or not parsed[2]:
            return
        _, client, args = parsed
        command = args[0].upper()
        if client != b"lua":
            self._close()
            if command in (b"EVALSHA", b"EVAL") and len(args) >= 3:
                sha = args[1].decode(errors="replace")
                script = self.names.get(sha, "unknown") if command == b"EVALSHA" else "eval"
                numkeys = int(args[2])
                self._current = Call(script, set(args[3 : 3 + numkeys]))
            return
        if self._current is None:
            return
        name = command.decode(errors="replace")
        if name in _ALL_KEYS:
            self._current.keys.update(args[1:])
        elif name in _TWO_KEYS:
            self._current.keys.update(args[1:3])
        elif name not in _NO_KEY and len(args) > 1:
            self._current.keys.add(args[1])

    def _close(self) -> None:
        call, self._current = self._current, None
        if call is None:
            return
        self.calls[call.script] += 1
        if len(call.slots()) > 1:
            self.spans.append(call)


@contextlib.asynccontextmanager
async def audited(server: EmbeddedRedis) -> AsyncIterator[tuple[SlotAudit, Redis]]:
    """A slot audit of ``server`` and a client of it: what the block runs is audited (the audit's
    results are complete once the block is left)."""
    audit = SlotAudit(server.port)
    audit.start()
    redis = connect(server.url)
    try:
        await asyncio.sleep(0.2)  # MONITOR attached
        yield audit, redis
        await redis.ping()  # closes the last script's group
        await asyncio.sleep(0.3)
    finally:
        audit.stop()
        await redis.aclose()
