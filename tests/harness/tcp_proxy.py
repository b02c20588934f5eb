"""A TCP proxy on loopback between the code under test and a real server, with faults a test switches on.

    with TcpProxy("127.0.0.1", redis_port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"   # point the client here
        proxy.set_latency(0.1)            # each chunk leaves 100 ms after it arrived, both directions
        proxy.set_latency(0.05, direction="to_server")
        proxy.blackhole()                 # connections stay open (new ones are accepted), no byte moves
        proxy.resume()                    # bytes flow again, held ones first; latency is kept
        proxy.cut()                       # close every open connection; new ones are still accepted
        proxy.refuse()                    # cut, and close every new connection at once: a server that is down
        proxy.resume()                    # accept and forward again

The proxy runs its own event loop in a background thread. Every control method is
thread-safe and synchronous: when it returns, the change is in effect for every byte that
arrives afterwards. Latency delays each chunk by the latency in force when it arrived,
keeping order (it models a long wire, not a slow one). A blackhole stops reading, so held
bytes stay in the kernel's buffers and are delivered on ``resume()``, as TCP delivers them
once a partition heals.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Literal, TypeVar

__all__ = ["Direction", "TcpProxy"]

Direction = Literal["to_server", "to_client", "both"]
T = TypeVar("T")

CONTROL_TIMEOUT = 10.0
READ_SIZE = 65536


class TcpProxy:
    """Forwards connections made to ``127.0.0.1:port`` to ``(target_host, target_port)``."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.accepted = 0  # connections accepted and forwarded, over the proxy's life
        self._latency = {"to_server": 0.0, "to_client": 0.0}
        self._refusing = False
        self._flowing: asyncio.Event | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # lifecycle

    def start(self) -> TcpProxy:
        if self._thread is not None:
            raise RuntimeError("TcpProxy already started")
        self._thread = threading.Thread(target=self._run, name=f"tcp-proxy->{self.target_port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(CONTROL_TIMEOUT):
            raise RuntimeError(f"TcpProxy did not start within {CONTROL_TIMEOUT} s")
        if self._error is not None:
            self._thread.join(CONTROL_TIMEOUT)
            raise RuntimeError("TcpProxy failed to start") from self._error
        return self

    def close(self) -> None:
        """Close every connection and the listener, and stop the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or not thread.is_alive() or loop is None or stop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has already finished
            loop.call_soon_threadsafe(stop.set)
        thread.join(CONTROL_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"TcpProxy thread did not stop within {CONTROL_TIMEOUT} s")

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # faults

    def set_latency(self, seconds: float, *, direction: Direction = "both") -> None:
        """Delay every chunk arriving from now on by ``seconds`` in ``direction``."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        directions = ("to_server", "to_client") if direction == "both" else (direction,)

        async def apply() -> None:
            for name in directions:
                self._latency[name] = seconds

        self._control(apply)

    def blackhole(self) -> None:
        """Keep (and keep accepting) connections, but move no byte either way until ``resume()``."""

        async def apply() -> None:
            assert self._flowing is not None
            self._flowing.clear()

        self._control(apply)

    def cut(self) -> int:
        """Close every open connection (both sides); return how many there were."""
        return self._control(self._cut_all)

    def refuse(self) -> int:
        """Cut every connection and close new ones as soon as they are accepted, until ``resume()``."""

        async def apply() -> int:
            self._refusing = True
            return await self._cut_all()

        return self._control(apply)

    def resume(self) -> None:
        """End a blackhole or refusal: accept and forward again. Latency stays as set."""

        async def apply() -> None:
            assert self._flowing is not None
            self._refusing = False
            self._flowing.set()

        self._control(apply)

    @property
    def open_connections(self) -> int:
        async def count() -> int:
            return len(self._links)

        return self._control(count)

    # the loop thread

    def _control(self, fn: Callable[[], Awaitable[T]]) -> T:
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            raise RuntimeError("TcpProxy is not running")

        async def run() -> T:
            return await fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(CONTROL_TIMEOUT)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._flowing = asyncio.Event()
        self._flowing.set()
        server = await asyncio.start_server(self._serve_link, self.host, 0)
        try:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()
        finally:
            server.close()
            await self._cut_all()
            await server.wait_closed()

    async def _cut_all(self) -> int:
        links = list(self._links)
        for link in links:
            link.cancel()
        await asyncio.gather(*links, return_exceptions=True)
        return len(links)

    async def _serve_link(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._refusing:
            await _abort(client_writer)
            return
        self._links.add(task)
        server_writer: asyncio.StreamWriter | None = None
        pumps: list[asyncio.Task[None]] = []
        try:
            try:
                server_reader, server_writer = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                return
            self.accepted += 1
            pumps = [
                asyncio.create_task(self._pump(client_reader, server_writer, "to_server")),
                asyncio.create_task(self._pump(server_reader, client_writer, "to_client")),
            ]
            # either side closing (or failing) ends the link: Redis clients never half-close
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # a cut: close both sides below, and end quietly
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await _abort(client_writer)
            if server_writer is not None:
                await _abort(server_writer)
            self._links.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        flowing = self._flowing
        assert flowing is not None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                while True:
                    await flowing.wait()  # a blackhole reads nothing: bytes wait in the kernel
                    data = await reader.read(READ_SIZE)
                    if not data:
                        break
                    queue.put_nowait((loop.time() + self._latency[direction], data))
            except OSError:
                pass
            queue.put_nowait(None)

        reading = asyncio.create_task(read())
        try:
            while (item := await queue.get()) is not None:
                release_at, data = item
                delay = release_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await flowing.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)


async def _abort(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
