"""The bench's delaying TCP proxy (bench/peers/slow_link.py): real sockets on loopback, no Redis.

What it must keep: every byte, in order, on every connection, when clients pipeline many writes at
once over several connections; and each direction at least the delay late. No timing is asserted
beyond that lower bound (the machine is shared).
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from bench.peers.slow_link import SlowLink, new_loop

ONE_WAY_S = 0.002


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()
    writer.close()


def _payload(conn: int, seq: int) -> bytes:
    """A chunk whose bytes say where it belongs, of a size that varies (1 byte to ~9 KB)."""
    head = f"<{conn}:{seq}>".encode()
    return head + hashlib.sha256(head).digest() * (seq * 37 % 280)


async def _client(port: int, conn: int, chunks: int) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = b"".join(_payload(conn, seq) for seq in range(chunks))
    for seq in range(chunks):  # pipelined: no waiting for the echo between writes
        writer.write(_payload(conn, seq))
        if seq % 50 == 0:
            await asyncio.sleep(0)  # let the other connections interleave
    await writer.drain()
    writer.write_eof()
    received = await asyncio.wait_for(reader.read(-1), 30)
    writer.close()
    return sent, received


async def _through_link() -> None:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = int(echo.sockets[0].getsockname()[1])
    async with SlowLink("127.0.0.1", port, ONE_WAY_S) as link:
        results = await asyncio.gather(*(_client(link.port, conn, 400) for conn in range(8)))
        for sent, received in results:
            assert len(received) == len(sent)
            assert received == sent  # same bytes, same order, nothing from another connection

        # The first byte back is at least one round trip of the link late.
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        began = time.perf_counter()
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        assert time.perf_counter() - began >= 2 * ONE_WAY_S
        writer.close()
    echo.close()
    await echo.wait_closed()


def test_bytes_arrive_whole_and_in_order_under_concurrent_pipelined_writes() -> None:
    loop = new_loop()
    try:
        loop.run_until_complete(_through_link())
    finally:
        loop.close()


def test_the_default_event_loop_works_too() -> None:
    asyncio.run(_through_link())


def test_only_loopback_addresses() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        SlowLink("10.0.0.1", 6379, ONE_WAY_S)
    with pytest.raises(ValueError, match="loopback only"):
        SlowLink("127.0.0.1", 6379, ONE_WAY_S, host="0.0.0.0")
