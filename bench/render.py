"""The benchmark's markdown document: machine, method, the tables and the notes."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import profiling
import report
import servers
import targets

if TYPE_CHECKING:
    from run import Bench

VERSION_PROBE = """
import os, statefulproxy
print(getattr(statefulproxy, "__version__", "?"))
print(os.path.dirname(statefulproxy.__file__))
"""


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git(directory: str) -> str:
    """The commit of the checkout the proxy was imported from, and whether its tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "-C", directory, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", directory, "status", "--porcelain", "--", "."], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if head.returncode != 0:
        return ""
    return f", git {head.stdout.strip()}" + (" + uncommitted changes" if dirty.stdout.strip() else "")


def _proxy_version() -> str:
    """Which statefulproxy ``python -m statefulproxy`` runs (from the repository, with this PYTHONPATH)."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", VERSION_PROBE],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=servers.REPO,
            env={**os.environ},
        )
    except (OSError, subprocess.TimeoutExpired):
        return "statefulproxy ?"
    lines = out.stdout.split("\n")
    if out.returncode != 0 or len(lines) < 2:
        return "statefulproxy not importable"
    version, where = lines[0].strip(), lines[1].strip()
    shown = os.path.relpath(where, servers.REPO) if where.startswith(str(servers.REPO)) else where
    return f"statefulproxy {version} from {shown}{_git(where)}"


def _versions() -> str:
    parts = [f"Python {platform.python_version()}", f"aiohttp {aiohttp.__version__}"]
    try:
        parts.append(f"uvloop {importlib.metadata.version('uvloop')} (upstream, relay, driver)")
    except importlib.metadata.PackageNotFoundError:
        parts.append("no uvloop")
    parts.append(_proxy_version())
    if os.environ.get("PYTHONPATH"):
        parts.append(f"PYTHONPATH={os.environ['PYTHONPATH']}")
    return ", ".join(parts)


def pinning_line(bench: Bench) -> str:
    plan = bench.pin
    if not plan.applied:
        return f"CPU pinning: not applied ({plan.why_not}); all processes share the machine's CPUs."
    checked = ", ".join(f"{name} {cpus}" for name, cpus in bench.pinned.items())
    return (
        f"CPU pinning: applied (sched_setaffinity on every thread, as `taskset -a -c`): driver, upstream and "
        f"redis-server on CPU {plan.load_cpu}, the proxy or relay on CPU {plan.hop_cpu}; the kernel reports "
        f"them allowed on: {checked}. Other processes on the machine are not pinned."
    )


def machine(bench: Bench) -> list[str]:
    return [
        f"Machine: {os.cpu_count()} CPUs ({bench.usable_cpus} usable), {_cpu_model()}, "
        f"Linux {platform.release()}; {_versions()}.",
        pinning_line(bench),
    ]


def document(bench: Bench) -> str:
    args = bench.args
    configs = args.configs
    concurrencies = args.concurrencies
    results = bench.results
    out = [
        "## Benchmark",
        "",
        *machine(bench),
        f"Each cell: {args.repeat} x ({args.warmup:g} s warm-up + {args.duration / args.repeat:g} s measured), "
        "interleaved (all configurations at one concurrency and mode, then the next; the whole matrix repeated), "
        "samples pooled. Closed loop: each worker sends its next request when the previous response has fully "
        "arrived; one aiohttp ClientSession, pool = concurrency, keep-alive. Latency = request sent → last body byte; "
        "TTFB = first body chunk. Percentiles exact (nearest rank over all samples). CPU per request = the process's "
        "CPU time in the measured window (/proc, all threads) ÷ the requests completed in it; a turn is one request "
        "of a session configuration. Column meanings: bench/README.md.",
        "",
        "### Headline (non-streaming; req/s ÷ stateless in parentheses)",
        "",
        report.headline_table(configs, concurrencies, results),
        "",
        "### Non-streaming",
        "",
        report.summary_table(configs, concurrencies, results, stream=False),
        "",
        "### Streaming (20 SSE chunk events + [DONE], sent in 4 writes)",
        "",
        report.summary_table(configs, concurrencies, results, stream=True),
        "",
        "### Redis work per turn (INFO commandstats deltas; a script's commands also count inside its evalsha)",
        "",
        report.redis_table(configs, concurrencies, results),
        "",
        "### Issue 12 targets (✓/✗ where the target applies)",
        "",
        targets.targets_table(configs, concurrencies, results),
        "",
        "### Added latency at concurrency 1 (ms; ✓/✗ against the target)",
        "",
        report.added_latency_table(configs, results),
        "",
        "### CPU in the measured window (% of one core; hop = relay or proxy process)",
        "",
        report.cpu_table(configs, concurrencies, results),
        "",
        "### Method notes",
        "",
    ]
    out += [f"- {note}" for note in notes(bench)]
    return "\n".join(out) + "\n"


def notes(bench: Bench) -> list[str]:
    found = []
    if any(config.history for config in bench.args.configs):
        found.append(
            "Session configurations: every request sends one new user message with header `session-id` (store "
            "not false), so each turn appends 2 messages. Each session is pre-filled before the run (untimed) and "
            "serves a fixed odd number of consecutive requests of one worker, so the history a request is spliced "
            "into is spread evenly around the nominal size (mean exactly the nominal size); one distinct session "
            "per worker at a time."
        )
    for key, pool in bench.pools.items():
        found.append(f"{key}: {pool.describe()}")
    if bench.redis is not None:
        found.append(f"redis: {bench.redis.how}")
    elif bench.redis_problem:
        found.append(f"redis unavailable: {bench.redis_problem}")
    for hop, server in bench.hops.items():
        if isinstance(server, servers.Server) and hop.startswith("proxy"):
            found.append(f"{hop} wrote {server.log_bytes()} bytes of log during the benchmark")
    found += bench.notes
    disturbed = []
    for (key, concurrency, stream), outcome in bench.results.items():
        mode = "stream" if stream else "json"
        driver = outcome.cpu_percent.get("driver", 0.0)
        if driver >= 90:
            found.append(f"driver-bound: {key} conc {concurrency} {mode} (driver at {driver:.0f}% of a core)")
        if outcome.other_cpu_percent >= 20:
            disturbed.append(f"{key} conc {concurrency} {mode} ({outcome.other_cpu_percent:.0f}%)")
    if disturbed:
        found.append(
            "other processes on the machine were busy during: " + ", ".join(disturbed) + " — those figures are "
            "disturbed; rerun on a quiet machine (--quiet-wait helps)"
        )
    return found


def profiles(bench: Bench) -> str:
    """``--profile``: one section per profiled cell, and the cells' packages side by side."""
    args = bench.args
    out = ["## Profile", "", *machine(bench), ""]
    out.append(
        f"py-spy samples the proxy's Python stacks for {args.duration:g} s after a {max(args.warmup, 1.0):g} s "
        "warm-up. µs/req = a frame's share of the samples times the proxy's CPU per request from /proc in that window. "
        "Self time of a Python frame includes the C functions it calls; "
        f"'{profiling.EVENT_LOOP}' is uvloop's own C code. How to read and record these: bench/PROFILE.md."
    )
    measured = []
    for cell, headline, profile in bench.profiles:
        if profile is None:
            out += ["", f"### Profile of the proxy: {cell}", "", f"Skipped: {headline}"]
            continue
        out += ["", profiling.render(cell, headline, profile, args.profile_top)]
        measured.append((cell, profile))
    if len(measured) >= 2:
        out += ["", "### Cells side by side", "", profiling.comparison_table(measured, args.profile_top)]
    if bench.notes:
        out += ["", "### Notes", "", *(f"- {note}" for note in bench.notes)]
    return "\n".join(out) + "\n"
