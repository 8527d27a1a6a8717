"""A delaying TCP proxy on loopback: the bench's stand-in for a network between workers and Redis.

Every byte read on one side is written to the other side ``one_way_s`` later, in both directions, so
that a request/response round trip gains ``2 * one_way_s``. Each direction of a connection keeps a
queue of chunks: a chunk is queued the moment it is read, with a ``loop.call_at`` at read time +
delay that writes the head of the queue. Pipelined bytes are therefore each delayed by the same
amount (a second request sent 0.1 ms after the first arrives 0.1 ms after it), not serialized one
delay after another, and order is kept because every callback writes the head of its queue (due
times only grow within a queue, so the head is never due later than the callback's own chunk).

The sockets have TCP_NODELAY on both sides, as Redis clients and servers have, so that the kernel
adds no batching of its own. The event loop runs on ``select()``: ``epoll``'s timeout has a 1 ms
resolution (Python rounds it up), which would turn a 1 ms delay into 1-2 ms; ``select()`` takes
microseconds, and the proxy has a handful of sockets; the process also asks Linux for 1 us of timer
slack instead of 50 us. Python's own work (a read and a timed write per direction) still adds some
0.3-0.5 ms to a round trip here: what the link really adds is measured by the bench through it
(``PING`` round trips), not assumed.

As a process of its own (one per block, stopped by its pid like every other)::

    python -m bench.peers.slow_link --target 127.0.0.1:6379 --rtt-ms 2 [--port N]

prints ``slow-link ready port=N`` when it listens. Loopback only: it binds and connects to
127.0.0.1 (or ::1 / localhost) and refuses any other address.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import ipaddress
import selectors
import signal
import socket
import sys

#: prctl(2) option: this thread's timer slack, in nanoseconds.
_PR_SET_TIMERSLACK = 29
#: The addresses the link accepts as its own and as its target.
_LOOPBACK_NAMES = ("localhost",)


def _loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: Queue markers after the last chunk: half-close the sink (the reader saw EOF), or close it.
_EOF = object()
_CLOSE = object()


class _Delayed:
    """One direction of one connection: what is pushed is written to ``sink`` ``delay`` seconds later."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.sink: asyncio.Transport | None = None
        self.queue: collections.deque[bytes | object] = collections.deque()
        self.done = False

    def push(self, item: bytes | object) -> None:
        self.queue.append(item)
        self.loop.call_at(self.loop.time() + self.delay, self._release)

    def _release(self) -> None:
        # One callback per item and due times that never decrease: the head is due no later than this
        # callback's own item, whichever of several callbacks with equal due times the loop runs first.
        item = self.queue.popleft()
        sink = self.sink
        if sink is None or self.done or sink.is_closing():
            return
        if isinstance(item, bytes):
            sink.write(item)
        elif item is _EOF and sink.can_write_eof():
            sink.write_eof()
        else:
            self.done = True
            sink.close()  # after what it has buffered


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: what it reads goes out through ``out`` (to the other socket);
    it is the sink of ``into``. When its own write buffer fills, the other socket stops being read."""

    def __init__(self, out: _Delayed, into: _Delayed, sides: set[_Side], wait_for_peer: bool = False) -> None:
        self.out = out
        self.into = into
        self.sides = sides
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.eof_seen = False
        #: A client is not read until its connection to the target is up (``SlowLink._dial``).
        self.wait_for_peer = wait_for_peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        _nodelay(transport)
        self.transport = transport
        self.into.sink = transport
        self.sides.add(self)
        if self.wait_for_peer:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.out.push(data)

    def eof_received(self) -> bool:
        self.eof_seen = True
        self.out.push(_EOF)
        return True  # keep our write side open: the other direction may still have bytes on the way

    def connection_lost(self, exc: Exception | None) -> None:
        self.sides.discard(self)
        self.into.done = True
        # The other socket closes once the bytes read from this one before it went are delivered.
        self.out.push(_CLOSE)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()


class SlowLink:
    """A delaying TCP proxy to ``target_host:target_port``, listening on loopback (``port`` 0: a free one).

    ``one_way_s`` is added in each direction, so a round trip gains twice that. ``await start()`` (or
    ``async with``) inside an event loop, ``await aclose()`` after; ``port`` is the port it listens on.
    """

    def __init__(
        self, target_host: str, target_port: int, one_way_s: float, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        for name in (target_host, host):
            if not _loopback(name):
                raise ValueError(f"slow_link is for loopback only, not {name!r}")
        if one_way_s < 0:
            raise ValueError("the delay cannot be negative")
        self.target = (target_host, target_port)
        self.one_way_s = one_way_s
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._dials: set[asyncio.Task[None]] = set()
        self._sides: set[_Side] = set()

    async def start(self) -> SlowLink:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accepted, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def _accepted(self) -> _Side:
        loop = asyncio.get_running_loop()
        up, down = _Delayed(loop, self.one_way_s), _Delayed(loop, self.one_way_s)
        client = _Side(out=up, into=down, sides=self._sides, wait_for_peer=True)
        task = loop.create_task(self._dial(client, _Side(out=down, into=up, sides=self._sides)))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)
        return client

    async def _dial(self, client: _Side, server: _Side) -> None:
        """Connect a new client to the target; the client is not read until then (so nothing is lost)."""
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: server, *self.target)
        except OSError:
            connected = False
        else:
            connected = True
        while client.transport is None:  # connection_made is scheduled with call_soon: it comes at once
            await asyncio.sleep(0)
        if not connected:
            client.transport.close()
            return
        assert server.transport is not None
        client.peer, server.peer = server, client
        if client.transport.is_closing():
            server.transport.close()
        else:
            client.transport.resume_reading()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._dials):
            task.cancel()
        for side in list(self._sides):
            if side.transport is not None:
                side.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> SlowLink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _fine_timers() -> None:
    """Ask Linux for 1 us of timer slack instead of 50 us: the delays are 1 ms, each wake-up counts."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1000, 0, 0, 0)


def new_loop() -> asyncio.AbstractEventLoop:
    """An event loop on ``select()``, whose timeout has microseconds (``epoll``'s has milliseconds)."""
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


async def _serve(args: argparse.Namespace) -> None:
    host, _, port = args.target.rpartition(":")
    link = await SlowLink(host.strip("[]"), int(port), args.rtt_ms / 2000, port=args.port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"slow-link ready port={link.port} target={args.target} rtt+={args.rtt_ms:g}ms", flush=True)
    await stop.wait()
    await link.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.slow_link", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT on loopback")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round-trip time added (half each way)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one, printed)")
    args = parser.parse_args(argv)
    _fine_timers()
    loop = new_loop()
    try:
        loop.run_until_complete(_serve(args))
    finally:
        loop.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
