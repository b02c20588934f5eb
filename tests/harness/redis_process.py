"""A redis-server on a fixed loopback port that a test can stop (SIGTERM or SIGKILL) and start again.

    with RedisProcess() as redis:              # started; redis.url == "redis://127.0.0.1:PORT/0"
        redis.stop(signal.SIGKILL)             # gone: connections to PORT are refused
        redis.start()                          # back on the same PORT, answering PING

Without ``persistent`` every start is empty. With it, Redis writes an append-only file
(``appendfsync always``) in a directory kept across restarts, so data written before a
stop is there after the next start.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from harness.redis_server import redis_server_binary

__all__ = ["RedisProcess"]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.01


class RedisProcess:
    """One redis-server process at a time, always on the same port."""

    def __init__(self, *, persistent: bool = False, extra_args: Sequence[str] = ()) -> None:
        self.persistent = persistent
        self.extra_args = tuple(extra_args)
        self.port = _free_port()
        self.starts = 0
        self._workdir = tempfile.TemporaryDirectory(prefix="statefulproxy-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return Path(self._workdir.name) / "redis.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start redis-server and wait until it answers PING; return how long that took."""
        if self.running:
            raise RuntimeError(f"redis-server already running on port {self.port}")
        if self.persistent:
            persistence = ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        else:
            persistence = ["--save", "", "--appendonly", "no"]
        args = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(self.port), *persistence]
        args += ["--dir", self._workdir.name, "--logfile", str(self.log_path), *self.extra_args]
        started = time.monotonic()
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        self.starts += 1
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with status {self._process.returncode} on port {self.port}:\n{self._log()}"
                )
            if ping(self.port):
                return time.monotonic() - started
            time.sleep(POLL_INTERVAL)  # polling interval, not synchronisation: the loop waits on PONG
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING within {timeout} s:\n{self._log()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Send ``sig`` and wait for the process to exit (SIGKILL after ``timeout``); return its exit status."""
        process = self._process
        if process is None:
            return None
        self._process = None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def close(self) -> None:
        try:
            self.stop(signal.SIGKILL)
        finally:
            self._workdir.cleanup()

    def __enter__(self) -> RedisProcess:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def ping(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether a Redis at ``host:port`` answers PING with PONG (not LOADING, not refused)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
