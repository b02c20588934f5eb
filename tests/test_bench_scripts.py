"""Smoke runs of the reliability scripts under bench/: each, in its quick mode, exits 0 and prints its figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_script(name: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / name), "--quick", *options],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=BENCH.parent,
    )


@pytest.mark.slow
def test_durability_quick_loses_no_acknowledged_turn_with_always() -> None:
    result = run_script("durability.py")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split("|")[1].strip(): line.split("|") for line in result.stdout.splitlines() if line.count("|") > 10}
    assert set(rows) >= {"appendfsync", "everysec", "always"}, result.stdout
    header = [cell.strip() for cell in rows["appendfsync"]]
    always = [cell.strip() for cell in rows["always"]]
    acknowledged = int(always[header.index("acknowledged")])
    persisted = int(always[header.index("persisted")])
    assert acknowledged > 0
    assert persisted == acknowledged
    assert always[header.index("lost acknowledged")].startswith("0")


@pytest.mark.slow
def test_durability_quick_cluster_failover_loses_and_duplicates_no_acknowledged_turn() -> None:
    result = run_script("durability.py", "--cluster")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split("|")[1].strip(): line.split("|") for line in result.stdout.splitlines() if line.count("|") > 10}
    assert set(rows) == {"appendfsync", "---", "cluster/always"}, result.stdout
    header = [cell.strip() for cell in rows["appendfsync"]]
    cluster = [cell.strip() for cell in rows["cluster/always"]]
    assert int(cluster[header.index("kills")]) == 1
    acknowledged = int(cluster[header.index("acknowledged")])
    assert acknowledged > 0
    assert int(cluster[header.index("persisted")]) == acknowledged
    assert cluster[header.index("lost acknowledged")].split()[0] == "0"
    assert cluster[header.index("duplicated")].split()[0] == "0"
    assert "replica promoted and cluster ok" in result.stdout


@pytest.mark.slow
def test_soak_quick_leaves_no_orphans_and_closes_upstream_on_disconnect() -> None:
    result = run_script("soak.py")
    assert result.returncode == 0, result.stdout + result.stderr
    figures = {
        line.split("|")[1].strip(): line.split("|")[2].strip()
        for line in result.stdout.splitlines()
        if line.startswith("| ") and line.count("|") == 4
    }
    orphans = next(value for name, value in figures.items() if name.startswith("orphan keys"))
    assert orphans.startswith("0 ")
    closed = next(value for name, value in figures.items() if name.startswith("disconnect → upstream closed"))
    assert closed.split()[0].isdigit()
    assert int(closed.split()[0]) < 1000
    rss = next(value for name, value in figures.items() if name.startswith("proxy RSS after warm-up"))
    assert "MiB" in rss
    measured = next(value for name, value in figures.items() if name.startswith("client disconnects measured"))
    assert int(measured.split()[0]) > 0
