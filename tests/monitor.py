"""Redis's MONITOR, read from tests: each command the server runs, with its database, its client
(``lua`` for the commands a script runs) and its arguments."""

from __future__ import annotations

import re
import socket
import time

#: ``+<time> [<db> <client>] "<arg>" "<arg>"...``
LINE = re.compile(rb"^\+[\d.]+ \[(\d+) ([^\]]+)\] (.*)$")
ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')


def unquote(raw: bytes) -> bytes:
    """A MONITOR argument without its escapes (enough for key names, ids and numbers)."""
    return re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), raw).replace(b'\\"', b'"')


def parse(line: bytes) -> tuple[bytes, bytes, list[bytes]] | None:
    """(db, client, arguments) of one MONITOR line; None for any other line."""
    match = LINE.match(line)
    if match is None:
        return None
    return match.group(1), match.group(2), [unquote(a) for a in ARG.findall(match.group(3))]


def commands(port: int, seconds: float) -> list[tuple[bytes, list[bytes]]]:
    """(client, arguments) of every command the server on ``port`` runs during ``seconds``."""
    seen: list[tuple[bytes, list[bytes]]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"MONITOR\r\n")
        buffer = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                buffer += sock.recv(65536)
            except TimeoutError:
                continue
            *lines, buffer = buffer.split(b"\r\n")
            for line in lines:
                parsed = parse(line)
                if parsed is not None and parsed[2]:
                    seen.append((parsed[1], parsed[2]))
    return seen
