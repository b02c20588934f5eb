"""``python -m statefulproxy`` as a real process, with everything it writes captured line by line.

    with proxy_process(["--upstream", url, "--store", store], env) as (proxy_url, proxy):
        proxy.wait_for("some line")     # event-driven: the reader thread wakes the test
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait() == 0

So the process's own logging configuration, signal handling and exit status are the ones under test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping

START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
READY_LINE = "Uvicorn running on"


class ProxyProcess:
    """``python -m statefulproxy`` with its stdout and stderr captured together."""

    def __init__(self, argv: list[str], env: Mapping[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "statefulproxy", *argv],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self.reader = threading.Thread(target=self._read, name="proxy-output", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True  # nobody waits for a line that will not come
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> str:
        """The first line containing ``text``, once the process has written it."""
        with self._changed:
            found = self._changed.wait_for(lambda: self._ended or any(text in line for line in self.lines), timeout)
            line = next((line for line in self.lines if text in line), None)
        if not found or line is None:
            raise AssertionError(f"the proxy never wrote {text!r}:\n{self.output}")
        return line

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """The exit status, once the process has ended and all it wrote was read."""
        status = self.process.wait(timeout)
        self.reader.join(timeout)
        return status

    def stop(self) -> str:
        """Stop it as an operator would (SIGINT), if still running; return all it wrote."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.reader.join(STOP_TIMEOUT)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return self.output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment less any STATEFULPROXY_ setting, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("STATEFULPROXY_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


@contextlib.contextmanager
def proxy_process(argv: list[str], env: Mapping[str, str]) -> Iterator[tuple[str, ProxyProcess]]:
    """A started proxy on a free port (``--port`` is added), and its URL; stopped on exit."""
    port = free_port()  # the CLI takes no port 0; a port taken in between fails startup loudly
    proxy = ProxyProcess([*argv, "--port", str(port)], env)
    try:
        proxy.wait_for(READY_LINE)
        yield f"http://127.0.0.1:{port}", proxy
    finally:
        proxy.stop()
