"""Smoke runs of the scripts under bench/: each, in its quick mode, exits 0 and prints its figures; and the
profile analysis of bench/profiling.py on a hand-written stack file."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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


def load_bench_module(name: str) -> ModuleType:
    """A bench/ module that imports nothing from bench/, loaded without putting bench/ on sys.path."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def table_rows(text: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first markdown table whose first column is ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return header, rows


def number(cell: str) -> float:
    match = re.match(r"[+-]?[\d,]+(\.\d+)?", cell)
    assert match, cell
    return float(match.group(0).replace(",", ""))


@pytest.mark.slow
def test_run_quick_reports_cpu_per_request_redis_per_turn_and_ratios() -> None:
    result = run_script("run.py", "--only", "ref,stateless,redis10", "--concurrency", "16")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout

    header, rows = table_rows(out, "configuration")  # the headline table comes first
    assert header == ["configuration", "c=1 req/s", "c=16 req/s", "proxy CPU µs/req", "redis CPU µs/turn"]
    headline = {row[0]: row for row in rows}
    redis10 = headline["(c) proxy, Redis session, 10 msgs"]
    assert number(redis10[1]) > 0
    assert re.search(r"\(\d\.\d\d.\)$", redis10[1])  # req/s with its ratio to stateless
    assert number(redis10[4]) > 0

    for mode in ("### Non-streaming", "### Streaming"):
        header, rows = table_rows(out[out.index(mode) :], "configuration")
        for column in (
            "÷ stateless",
            "÷ relay",
            "proxy CPU µs/req",
            "CPU ÷ stateless",
            "CPU ÷ relay",
            "redis CPU µs/turn",
        ):
            assert column in header, (mode, header)
        cells = {(row[0], row[1]): dict(zip(header, row, strict=True)) for row in rows}
        assert {conc for _, conc in cells} == {"1", "16"}
        for conc in ("1", "16"):
            session = cells[("(c) proxy, Redis session, 10 msgs", conc)]
            stateless = cells[("(b) proxy, no session", conc)]
            relay = cells[("(ref) aiohttp relay", conc)]
            assert number(session["proxy CPU µs/req"]) > 0
            assert number(session["redis CPU µs/turn"]) > 0
            assert stateless["redis CPU µs/turn"] == "—"
            assert number(stateless["÷ stateless"]) == 1.0
            assert number(relay["CPU ÷ relay"]) == 1.0
            assert number(session["CPU ÷ stateless"]) > 0
            assert number(session["÷ relay"]) > 0
            assert session["errors"] == "0"
            if mode == "### Streaming":
                assert number(session["TTFB p50 ms"]) > 0
                number(session["TTFB p50 + over relay ms"])

    header, rows = table_rows(out[out.index("### Redis work per turn") :], "configuration")
    assert len(rows) == 4  # redis10 at 2 concurrencies x 2 modes
    for row in rows:
        per_turn = dict(zip(header, row, strict=True))
        assert number(per_turn["commands/turn"]) >= 1
        assert re.search(r"`[a-z]+` \d+\.\d\d, \d+\.\d µs", per_turn["top commands: calls, µs per turn"]), row

    header, rows = table_rows(out[out.index("### Issue 12 targets") :], "target")
    assert header[2:] == ["c=1 json", "c=1 stream", "c=16 json", "c=16 stream"]
    errors = next(row for row in rows if row[0].startswith("errors"))
    assert errors[2:] == ["0 ✓"] * 4

    usable = sorted(os.sched_getaffinity(0))
    if len(usable) >= 2:
        assert "CPU pinning: applied" in out
        assert f"proxy-redis {usable[1]}" in out
        assert f"redis-server {usable[0]}" in out
    else:
        assert "CPU pinning: not applied" in out


def test_run_rejects_bad_options_with_a_message() -> None:
    for options, message in [
        (["--concurrency", "16,x"], "--concurrency: 'x' is not a positive integer"),
        (["--profile", "redis10:16"], "expected CONFIG:CONCURRENCY:MODE"),
        (["--profile", "ref:16:json"], "only the proxy configurations"),
        (["--profile", "redis10:16:xml"], "mode must be one of"),
    ]:
        result = run_script("run.py", *options)
        assert result.returncode == 2, options
        assert message in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_profile_quick_prints_the_proxys_top_costs() -> None:
    result = run_script("run.py", "--profile", "redis10:16:json", "--duration", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    if shutil.which("py-spy") is None:
        assert "py-spy is not on PATH" in result.stdout
        return
    header, rows = table_rows(result.stdout, "statefulproxy function")
    assert header[:3] == ["statefulproxy function", "own µs/req", "share"]
    assert any("(stores/" in row[0] or "(sessions/" in row[0] for row in rows), rows
    _, packages = table_rows(result.stdout, "package (self time)")
    assert "statefulproxy" in {row[0] for row in packages}
    assert sum(number(row[1]) for row in packages) > 0


def test_profile_charges_each_sample_to_its_deepest_statefulproxy_frame() -> None:
    profiling = load_bench_module("profiling")
    boot = "<module> (statefulproxy/__main__.py);serve (statefulproxy/server.py);Runner.run (asyncio/runners.py)"
    text = "\n".join(
        [
            f"{boot} 40",  # uvloop's C code
            f"{boot};ChatTurn.run (statefulproxy/asgi/chat.py);_pack (statefulproxy/stores/resp.py) 10",
            f"{boot};ChatTurn.run (statefulproxy/asgi/chat.py);ClientSession._request (aiohttp/client.py) 30",
            f"{boot};ChatTurn.run (statefulproxy/asgi/chat.py) 5",
            f"{boot};RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py) 15",
        ]
    )
    profile = profiling.Profile(profiling.parse_folded(text), us_per_request=200.0)
    assert profile.total == 100
    chat = "ChatTurn.run (statefulproxy/asgi/chat.py)"
    assert profile.own[chat] == 35  # its self time and aiohttp's under it, not _pack's
    assert profile.inclusive[chat] == 45
    assert profile.module_inclusive["asgi/chat.py"] == 45
    assert profile.module_own["stores/resp.py"] == 10
    assert profile.by_package == {profiling.EVENT_LOOP: 40, "aiohttp": 30, "uvicorn": 15, "statefulproxy": 15}
    assert profile.own[profiling.NO_OWN_FRAME] == 55  # the bootstrap frames (serve) are not charged
    assert profile.us(10) == pytest.approx(20.0)
    own = profiling.own_table(profile, top=5)
    assert "| ChatTurn.run (asgi/chat.py) | 70 | 35.0% | 10 | aiohttp 60 | 90 |" in own
    assert "serve (server.py)" not in own + profiling.self_table(profile, top=10)


def test_profile_cells_are_parsed_or_refused() -> None:
    profiling = load_bench_module("profiling")
    keys = ["stateless", "redis10"]
    cells = profiling.parse_cells("redis10:16:json, stateless:64:stream", keys)
    assert [(c.key, c.concurrency, c.stream) for c in cells] == [("redis10", 16, False), ("stateless", 64, True)]
    for bad in ("", "redis10:0:json", "nope:16:json", "redis10:16"):
        with pytest.raises(ValueError, match=r"."):
            profiling.parse_cells(bad, keys)
