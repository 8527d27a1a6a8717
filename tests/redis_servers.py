"""redis-server processes of a test's own, configured as a managed Redis would be: TLS with a CA made
in the test, ACL users, replicas and Sentinel. Each listens on a free loopback port, keeps its files in
the test's directory and is stopped (or killed) by its own PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from stepq.workers.embedded import free_port

START_TIMEOUT_S = 10.0


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test, or fail it where CI requires these tests to run (``STEPQ_REQUIRE_REDIS_SERVER=1``,
    set by .ci/run, which installs what they need)."""
    if os.environ.get("STEPQ_REQUIRE_REDIS_SERVER") == "1":
        pytest.fail(f"STEPQ_REQUIRE_REDIS_SERVER=1 but {reason}")
    pytest.skip(reason)


def redis_server_binary() -> str:
    """Debian's redis-server (built with TLS); the test is skipped when there is none on PATH."""
    binary = shutil.which("redis-server")
    if binary is None:
        skip_or_fail("needs redis-server on PATH (Debian: apt-get install redis-server)")
    return binary


def require_tls(binary: str) -> None:
    """Skip unless ``binary`` was built with TLS (Debian's is; a plain `make` build is not)."""
    probe = subprocess.run(
        [binary, "--port", "0", "--tls-port", "0", "--loglevel", "warning"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    output = probe.stdout + probe.stderr
    if "not listen anywhere" not in output:
        skip_or_fail(f"{binary} has no TLS support (built without BUILD_TLS=yes): {output.strip()[-200:]}")


class RedisServer:
    """One redis-server (or sentinel) child process, configured by ``settings`` (config-file lines)."""

    def __init__(
        self, directory: Path, name: str, settings: Iterable[str], *, port: int | None = None, sentinel: bool = False
    ) -> None:
        self.binary = redis_server_binary()
        self.directory = directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = port or free_port()
        self.sentinel = sentinel
        self.config = self.directory / ("sentinel.conf" if sentinel else "redis.conf")
        base = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f"dir {self.directory}",
            f"logfile {self.directory / 'server.log'}",
        ]
        if not sentinel:
            base += ['save ""', "appendonly no"]
        self.config.write_text("\n".join([*base, *settings]) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, listen_port: int | None = None) -> RedisServer:
        """Start it and wait until ``listen_port`` (default: ``port``) accepts connections."""
        argv = [self.binary, str(self.config)] + (["--sentinel"] if self.sentinel else [])
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                error = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}: {error}\n{self.log[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", listen_port or self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"{self.name} did not listen within {START_TIMEOUT_S} s:\n{self.log[-2000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.proc is not None and self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self.proc is not None and self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


@dataclass(frozen=True)
class TlsFiles:
    """A CA made for the test, a server certificate for 127.0.0.1/localhost and a client certificate
    it signed; ``other_ca``: a CA that signed neither."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {done.stderr}")


def make_tls_files(directory: Path) -> TlsFiles:
    """Make the CA and certificates with the openssl command (EC P-256 keys: quick to make)."""
    if shutil.which("openssl") is None:
        skip_or_fail("needs the openssl command to make a CA for the test")
    directory.mkdir(parents=True, exist_ok=True)
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "other-ca"):
        _openssl(
            "req",
            "-x509",
            "-new",
            *key,
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.crt",
            "-days",
            "2",
            "-subj",
            f"/CN=stepq test {ca}",
            cwd=directory,
        )
    for name, extensions in (
        # (servers are clients too: replicas of a master, sentinels of the servers they watch)
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (directory / f"{name}.ext").write_text(extensions + "\n")
        _openssl(
            "req",
            "-new",
            *key,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=stepq {name}",
            cwd=directory,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=directory,
        )
    return TlsFiles(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.crt",
    )


def tls_settings(files: TlsFiles, port: int) -> list[str]:
    """Config lines for a TLS-only server on ``port`` that wants a client certificate."""
    return [
        "port 0",
        f"tls-port {port}",
        f"tls-cert-file {files.server_cert}",
        f"tls-key-file {files.server_key}",
        f"tls-ca-cert-file {files.ca}",
        "tls-auth-clients yes",
    ]
