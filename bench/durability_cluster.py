"""Durability under a Redis Cluster failover: does SIGKILL of a master lose or duplicate acknowledged turns?

    python bench/durability.py --cluster            # 3 failovers, each on another master, ~1 min
    python bench/durability.py --quick --cluster    # smoke run: 1 failover, ~20 s

The load, the retries of every failed attempt with the same ``Idempotency-Key`` and body, and the read-back
through the management API are durability.py's, unchanged. Only the store differs: a Redis Cluster of 3 masters
with 1 replica each, formed by tests/harness/redis_cluster.py (AOF on with ``appendfsync always``,
``cluster-node-timeout`` 1000 ms), and the proxy on its ``redis+cluster://`` URL. Mid-load a master holding
keys is SIGKILLed and not restarted in its place: the other nodes mark it failed, its replica is elected and
serves its slots. Once the killed port no longer serves a slot and every live node says ``cluster_state:ok``,
the old node is started again from its own dir: it learns that it lost its slots and rejoins as a replica of
the promoted one (a restarted master is refused writes for its first 2 s, for just this reason). Each next kill
takes a master holding keys that was not killed before, while there is one.

Replication is asynchronous and the proxy does not ``WAIT`` for replicas: a turn acknowledged just before
the kill whose write had not yet reached the replica would be lost with the old master; this measures it.

The unavailability window of a kill runs from its first failed attempt (when that attempt ended) to the first
turn acknowledged after it on an *affected* session (one with a failed attempt since that kill). The proxy
retries a command that surely never ran until the slot map names the promoted replica, so most turns on the
killed master's slots wait instead of failing: the slowest turn acknowledged after each kill is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import durability as single
import redis
import servers

MASTERS = 3
NODE_TIMEOUT_MS = 1000
PROMOTION_TIMEOUT_S = 30.0
REJOIN_TIMEOUT_S = 30.0
LABEL = "cluster/always"


@dataclass
class Failover:
    """One SIGKILLed master and what followed it; times are time.monotonic()."""

    port: int
    keys: int  # DBSIZE of the master when it was picked
    killed: float
    promoted: float = 0.0  # the port serves no slot any more and every live node says cluster_state:ok
    rejoined: float = 0.0  # the old node back as a replica in sync with its promoted one
    first_failure: float | None = None
    window_s: float | None = None  # first failed attempt to the first acknowledged turn of an affected session
    all_back_s: float | None = None  # first failed attempt until every affected session had a turn acknowledged
    affected: int = 0  # sessions with a failed attempt after this kill (before the next)
    slowest_turn_s: float = 0.0  # of the turns acknowledged after this kill, first attempt to acknowledgement


@dataclass
class FailoverPass(single.Pass):
    failovers: list[Failover] = field(default_factory=list)
    formed_s: float = 0.0  # the harness forming the cluster


def cluster_harness() -> ModuleType:
    """tests/harness/redis_cluster.py (its own imports are ``harness.*``, so tests/ goes on the path)."""
    tests = str(single.REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import harness.redis_cluster  # type: ignore[import-not-found,unused-ignore]

    return harness.redis_cluster


def replication(port: int) -> dict[str, Any]:
    try:
        with cluster_harness().admin(port) as client:
            info: dict[str, Any] = client.info("replication")
            return info
    except (redis.RedisError, OSError):
        return {}


def pick_master(cluster: Any, killed_before: list[int]) -> tuple[int, int]:
    """(port, keys) of a master holding keys and with a replica attached; one not killed before if any."""
    keys: dict[int, int] = {}
    for port in cluster.masters():
        if int(replication(port).get("connected_slaves", 0)) > 0:
            with cluster_harness().admin(port) as client:
                keys[port] = int(client.dbsize())
    holding = [port for port, count in keys.items() if count > 0]
    if not holding:
        raise RuntimeError(f"no master with a replica holds a key: {keys}")
    port = min(holding, key=lambda port: (killed_before.count(port), -keys[port]))
    return port, keys[port]


def wait_promoted(cluster: Any, port: int) -> None:
    """Poll until ``port`` serves no slot (its replica took them) and the cluster is ok on every live node."""

    def replaced() -> bool:
        try:
            return port not in cluster.masters()
        except (redis.RedisError, OSError):
            return False

    cluster_harness().poll(replaced, PROMOTION_TIMEOUT_S, f"a replica taking over the slots of :{port}")
    cluster.wait_ok(PROMOTION_TIMEOUT_S)


def rejoin(cluster: Any, port: int) -> None:
    """Start the killed node again from its dir and poll until it is an in-sync replica and the cluster ok."""
    cluster.node(port).start()

    def synced() -> bool:
        info = replication(port)
        in_sync = info.get("master_link_status") == "up" and not int(info.get("master_sync_in_progress", 0))
        return info.get("role") == "slave" and in_sync

    cluster_harness().poll(synced, REJOIN_TIMEOUT_S, f"the old master :{port} rejoining as a replica")
    cluster.wait_ok(REJOIN_TIMEOUT_S)


async def failover_schedule(run: FailoverPass, cluster: Any, stop: asyncio.Event, kills: int, phase_s: float) -> None:
    """Load for ``phase_s``, then ``kills`` times: SIGKILL a master, wait for its replica's promotion, bring the
    old node back as a replica, load ``phase_s`` more."""
    try:
        await asyncio.sleep(phase_s)
        for number in range(1, kills + 1):
            port, keys = await asyncio.to_thread(pick_master, cluster, [f.port for f in run.failovers])
            failover = Failover(port=port, keys=keys, killed=time.monotonic())
            run.failovers.append(failover)
            run.kills.append(failover.killed)
            await asyncio.to_thread(cluster.kill, port)
            acknowledged = len(run.acknowledged)
            progress(f"kill -9 #{number} of master :{port} ({keys} keys; {acknowledged} turns acknowledged)")
            await asyncio.to_thread(wait_promoted, cluster, port)
            failover.promoted = time.monotonic()
            run.back.append(failover.promoted)
            progress(f"replica promoted, cluster ok {failover.promoted - failover.killed:.2f} s after the kill")
            await asyncio.to_thread(rejoin, cluster, port)
            failover.rejoined = time.monotonic()
            progress(f":{port} back as a synced replica after {failover.rejoined - failover.promoted:.2f} s more")
            await asyncio.sleep(phase_s)
    finally:
        stop.set()


def progress(message: str) -> None:
    single.progress(f"  {LABEL}: {message}")


def measure(run: FailoverPass) -> None:
    """Each failover's unavailability window, affected sessions and slowest turn, from the recorded attempts."""
    ends = [failover.killed for failover in run.failovers[1:]] + [run.stopped]
    for failover, end in zip(run.failovers, ends, strict=True):
        acknowledged = [turn for turn in run.acknowledged if failover.killed <= turn.at < end]
        failover.slowest_turn_s = max((turn.at - turn.first for turn in acknowledged), default=0.0)
        failed = [(at, session_id) for at, session_id in run.failed_at if failover.killed <= at < end]
        if not failed:
            continue
        first = failover.first_failure = min(at for at, _ in failed)
        affected = {session_id for _, session_id in failed}
        failover.affected = len(affected)
        back: dict[str, float] = {}
        for turn in acknowledged:
            if turn.session_id in affected and turn.at > first:
                back[turn.session_id] = min(back.get(turn.session_id, turn.at), turn.at)
        if back:
            failover.window_s = min(back.values()) - first
        if len(back) == len(affected):
            failover.all_back_s = max(back.values()) - first


async def run_cluster_pass(args: argparse.Namespace, work_dir: Path, log_dir: Path) -> FailoverPass:
    harness = cluster_harness()
    cluster = harness.RedisCluster(masters=MASTERS, replicas=1, node_timeout_ms=NODE_TIMEOUT_MS, persistent=True)
    run = FailoverPass(fsync="cluster", workers=args.workers)
    started: list[servers.Server] = []
    try:
        await asyncio.to_thread(cluster.start)
        run.formed_s = cluster.formed_in
        proxy = await single.start_stack("cluster", cluster.url, args, work_dir, log_dir, started)
        nodes = ", ".join(f":{port}" for port in cluster.ports)
        progress(f"cluster {nodes} formed in {run.formed_s:.2f} s, proxy :{proxy.port}, {run.workers} workers")
        stop = asyncio.Event()
        run.started = time.monotonic()
        await asyncio.gather(
            single.drive(run, proxy.base_url, stop), failover_schedule(run, cluster, stop, args.kills, args.phase)
        )
        run.stopped = time.monotonic()
        progress(f"load stopped; reading {len({t.session_id for t in run.turns})} sessions back")
        await single.verify(run, proxy.base_url)
    finally:
        for server in reversed(started):
            servers.stop(server)
        if args.keep_logs:
            for node in cluster.nodes:
                if node.log_path.exists():
                    shutil.copy(node.log_path, log_dir / f"redis-{node.port}.log")
        cluster.close()
    measure(run)
    return run


def seconds(values: list[float | None]) -> str:
    return ", ".join("none" if value is None else f"{value:.2f}" for value in values) or "none"


def report(run: FailoverPass, args: argparse.Namespace) -> str:
    command = "python bench/durability.py" + (" --quick" if args.quick else "") + " --cluster"
    header, separator = single.TABLE_HEADER
    mark = " ✗" if run.lost else " ✓"
    windows = seconds([failover.window_s for failover in run.failovers])
    waits = seconds([failover.slowest_turn_s for failover in run.failovers])
    lines = [
        f"#### Durability: SIGKILL of a Redis Cluster master under load, its replica promoted (`{command}`)",
        "",
        header + " unavailable s (first failed attempt → first ack of an affected session, per kill) "
        "| longest turn s (first attempt → ack, acked after a kill, per kill) |",
        separator + "---|---|",
        single.table_row(run, LABEL, "0", mark) + f" {windows} | {waits} |",
        "",
        "Notes:",
        "",
        f"- {LABEL}: {MASTERS} masters with 1 replica each (AOF, `appendfsync always`, `cluster-node-timeout` "
        f"{NODE_TIMEOUT_MS} ms), formed in {run.formed_s:.2f} s; proxy `lease_ttl: {args.lease_ttl:g}s`.",
    ]
    for number, failover in enumerate(run.failovers, start=1):
        promoted, rejoined = failover.promoted - failover.killed, failover.rejoined - failover.promoted
        first = "no failed attempt"
        if failover.first_failure is not None:
            first = f"first failed attempt +{failover.first_failure - failover.killed:.2f} s after the kill"
        lines.append(
            f"- kill #{number}: master :{failover.port} ({failover.keys} keys); replica promoted and cluster ok "
            f"{promoted:.2f} s after the kill; old node back as a synced replica {rejoined:.2f} s later; {first}; "
            f"unavailable {seconds([failover.window_s])} s until the first affected session's ack, "
            f"{seconds([failover.all_back_s])} s until all {failover.affected} affected sessions' acks; "
            f"slowest turn acknowledged after the kill {failover.slowest_turn_s:.2f} s (first attempt to ack)"
        )
    why = ", ".join(f"{reason} x {count}" for reason, count in run.failures.most_common(4)) or "none"
    most = max((turn.attempts for turn in run.acknowledged), default=0)
    lines.append(
        f"- failed attempts: {why}; sessions with acknowledged turns not found on read-back: {run.missing_sessions}; "
        f"slowest acknowledged attempt {run.max_latency_s:.2f} s, slowest turn with its retries "
        f"{run.max_turn_s:.2f} s ({most} attempts at most); "
        f"turns acknowledged after the last promotion: {run.acks_after_last_restart()}"
    )
    for turn in run.lost[:3]:
        lines.append(f"  - lost: {turn.content!r}, acknowledged at +{turn.at - run.started:.3f} s")
    lines.append(
        "- Exactly as the single-node run: a failed attempt is sent again with the same `Idempotency-Key` and body "
        "until acknowledged, every acknowledged turn is looked up through the management API afterwards, and a user "
        "message stored twice counts as duplicated. Replication is asynchronous (no `WAIT`): a turn acknowledged just "
        "before the kill and not yet replicated would be *lost acknowledged*."
    )
    return "\n".join(lines)


def verdicts(run: FailoverPass) -> list[str]:
    """Hard failures of the run (empty: it passed)."""
    problems = []
    if run.lost:
        problems.append(f"{LABEL}: a failover lost {len(run.lost)} acknowledged turns")
    if run.duplicated:
        problems.append(f"{LABEL}: {run.duplicated} turns stored more than once")
    if run.steady_rps() == 0:
        problems.append(f"{LABEL}: no turn acknowledged before the first kill")
    if run.acks_after_last_restart() == 0:
        problems.append(f"{LABEL}: no turn acknowledged after the last promotion (the proxy did not recover)")
    return problems


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="statefulproxy-durability-cluster-") as tmp:
        work_dir = Path(tmp)
        log_dir = work_dir / "logs"
        log_dir.mkdir()
        try:
            run = await run_cluster_pass(args, work_dir, log_dir)
        except (servers.Unavailable, RuntimeError) as exc:
            print(f"durability: the cluster or a server did not start or recover: {exc}", file=sys.stderr)
            return 2
        finally:
            if args.keep_logs:
                kept = Path(tempfile.mkdtemp(prefix="statefulproxy-durability-logs-"))
                shutil.copytree(log_dir, kept, dirs_exist_ok=True)
                single.progress(f"logs kept in {kept}")
    print(report(run, args))
    problems = verdicts(run)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0
