"""A TCP proxy that can black-hole its traffic: the network failure that gives no reset.

``BlackHoleProxy(host, port)`` listens on a free loopback port and forwards every connection to
``host:port``. ``black_hole()`` makes it drop every byte, both ways, while keeping every socket open
(and accepting new connections), as a link that goes dark or a firewall that drops packets: the
peers see no error, only silence, and what was sent meanwhile is lost. ``restore()`` forwards again.
It runs its own event loop in a thread, so that blocking test code cannot stall it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class BlackHoleProxy:
    """See the module docstring."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.dropping = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="blackhole-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> BlackHoleProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def black_hole(self) -> None:
        """Drop every byte from now on, closing nothing."""
        self.dropping = True

    def restore(self) -> None:
        """Forward again (what was dropped stays lost)."""
        self.dropping = False

    def stop(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, server_writer}
        await asyncio.gather(
            self._pump(client_reader, server_writer),
            self._pump(server_reader, client_writer),
            return_exceptions=True,
        )
        for writer in (client_writer, server_writer):
            self._writers.discard(writer)
            writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self.dropping:
                    continue
                writer.write(data)
                await writer.drain()
        writer.close()
