"""A TCP hop that loses the first response a client is sent, so that the client retries."""

from __future__ import annotations

import contextlib
import socket
import threading


class CutFirstResponse:
    """A TCP hop that drops the first connection when the response bytes holding ``marker``
    arrive, without passing them on: the SDK never sees the end of an answer the proxy
    recorded before sending it, and retries."""

    def __init__(self, target: str, marker: bytes) -> None:
        self.marker = marker
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._serve)]
        self.threads[0].start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                self.connections += 1
                upstream = socket.create_connection(self.target)
                self.sockets += [client, upstream]
                cut = self.connections == 1
                for source, sink, is_response in ((client, upstream, False), (upstream, client, True)):
                    thread = threading.Thread(target=self._pump, args=(source, sink, is_response and cut))
                    self.threads.append(thread)
                    thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, cut: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if cut and self.marker in data:
                    # shutdown, not just close: another thread is blocked in recv on these
                    _shut(source)
                    _shut(sink)
                    return
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        _shut(self.listener)
        self.listener.close()
        for sock in self.sockets:
            _shut(sock)
        for thread in self.threads:
            thread.join(timeout=5)
        for sock in self.sockets:
            sock.close()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
