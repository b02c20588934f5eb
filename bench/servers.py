"""Starting, probing, accounting and stopping the benchmark's server processes."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pinning

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
HAS_SCHEDSTAT = Path("/proc/self/schedstat").exists()


class Unavailable(Exception):
    """A server could not be started; the message is the reason shown in the table."""


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None
    log_path: Path | None
    pids: list[int] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_bytes(self) -> int:
        return self.log_path.stat().st_size if self.log_path and self.log_path.exists() else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: a server outlives no crash of the driver
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _child_setup(cpus: set[int] | None) -> Callable[[], None]:
    def setup() -> None:
        _die_with_parent()
        pinning.preexec(cpus)

    return setup


async def tcp_ready(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def http_status(port: int, path: str) -> int | None:
    """Status of ``GET path`` on a fresh connection, None when nothing answers."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 5)
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def log_tail(path: Path | None, lines: int = 3) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(line.strip() for line in text[-lines:])


# the benches drive thousands of sessions under one credential: no per-owner cap, unless asked for
BENCH_ENV = {"STATEFULPROXY_MAX_SESSIONS_PER_OWNER": "0"}


def spawn(argv: list[str], log_path: Path, cpus: set[int] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` from the repository (so ``python -m statefulproxy`` honours PYTHONPATH), pinned to ``cpus``."""
    env = {**BENCH_ENV, **os.environ}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            preexec_fn=_child_setup(cpus),
        )


async def start(
    name: str,
    argv: list[str],
    port: int,
    log_dir: Path,
    ready: Callable[[], Awaitable[bool]],
    deadline_s: float = 20.0,
    cpus: set[int] | None = None,
) -> Server:
    """Start ``argv`` (its output to a log file), wait until ``ready()`` is true; Unavailable on exit or timeout."""
    log_path = log_dir / f"{name}.log"
    process = spawn(argv, log_path, cpus)
    server = Server(name=name, port=port, process=process, log_path=log_path, pids=[process.pid])
    deadline = time.monotonic() + deadline_s
    while True:
        if process.poll() is not None:
            raise Unavailable(f"exited with status {process.returncode}: {log_tail(log_path)}")
        if await ready():
            server.pids = [process.pid, *descendants(process.pid)]
            return server
        if time.monotonic() > deadline:
            stop(server)
            raise Unavailable(f"not ready within {deadline_s:.0f} s: {log_tail(log_path)}")
        await asyncio.sleep(0.05)


def stop(server: Server) -> None:
    process = server.process
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of the processes (all their threads), from /proc: the scheduler's nanosecond runtime of each
    thread (``task/*/schedstat``) where the kernel has it, else user + system clock ticks (10 ms steps)."""
    return sum(_process_cpu_seconds(pid) for pid in pids)


def _process_cpu_seconds(pid: int) -> float:
    if HAS_SCHEDSTAT:
        total = 0
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that just exited
                    total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICK
    return 0.0


def machine_busy_seconds() -> float:
    """CPU time all CPUs spent busy (user, nice, system, irq, softirq, steal), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICK


async def wait_for_quiet(max_busy_percent: float, deadline_s: float, sample_s: float = 0.5) -> float:
    """Wait (at most ``deadline_s``) until the machine is busy less than ``max_busy_percent`` of one core over
    ``sample_s``, while the benchmark itself is idle; returns the last busy reading."""
    deadline = time.monotonic() + deadline_s
    while True:
        before = machine_busy_seconds()
        await asyncio.sleep(sample_s)
        busy = 100 * (machine_busy_seconds() - before) / sample_s
        if busy < max_busy_percent or time.monotonic() >= deadline:
            return busy


# ---- redis


@dataclass
class Redis:
    url: str
    pid: int | None
    how: str


async def _redis_pid(url: str) -> int | None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("server")
        return int(info["process_id"])
    except Exception:
        return None
    finally:
        await client.aclose()


def _harness_url(handle: object) -> str | None:
    if isinstance(handle, str):
        return handle
    url = getattr(handle, "url", None)
    if isinstance(url, str):
        return url
    port = getattr(handle, "port", None)
    return f"redis://127.0.0.1:{port}/0" if isinstance(port, int) else None


@contextlib.contextmanager
def _harness_redis() -> Iterator[str]:
    """tests/harness/redis_server.py's running_redis(), when that helper exists and yields something usable."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.harness.redis_server import running_redis  # type: ignore[import-not-found,unused-ignore]

    with running_redis() as handle:
        url = _harness_url(handle)
        if url is None:
            raise Unavailable(f"running_redis() yielded {handle!r}, no url/port")
        yield url


async def start_redis(
    log_dir: Path, stack: contextlib.ExitStack, cpus: set[int] | None = None
) -> tuple[Redis, Server | None]:
    """A dedicated redis-server: the test harness's if it works, else redis-server from PATH (pinned to ``cpus``;
    the harness's inherits this process's CPUs, and the caller pins it by pid)."""
    harness_problem = ""
    try:
        url = stack.enter_context(_harness_redis())
    except Exception as exc:
        harness_problem = f"{type(exc).__name__}: {exc}"
    else:
        return Redis(url=url, pid=await _redis_pid(url), how="tests/harness/redis_server.py running_redis()"), None
    binary = shutil.which("redis-server")
    if binary is None:
        raise Unavailable("no redis-server on PATH and the test harness is not usable: " + harness_problem)
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(log_dir)]
    server = await start("redis", argv, port, log_dir, lambda: tcp_ready(port), cpus=cpus)
    url = f"redis://127.0.0.1:{port}/0"
    pid = await _redis_pid(url)
    how = f"redis-server from PATH ({binary}, --save '' --appendonly no)"
    if harness_problem:
        how += f"; harness not used ({harness_problem[:80]})"
    return Redis(url=url, pid=pid, how=how), server
