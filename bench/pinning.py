"""CPU pinning for the benchmark: the load side on one CPU, the hop under test alone on another.

The driver (this process), the upstream and redis-server share the first usable CPU; the proxy or the relay
gets the second, so its CPU per request is not disturbed by the processes that feed it. This is what
``taskset -a -c N`` does, done with ``sched_setaffinity`` on every thread, so no binary is needed. Other
processes on the machine are not ours to pin and may still run on either CPU.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Plan:
    """Where each role runs; ``load_cpu is None`` when pinning is off, with the reason in ``why_not``."""

    load_cpu: int | None
    hop_cpu: int | None
    why_not: str = ""

    @property
    def applied(self) -> bool:
        return self.load_cpu is not None

    def load_cpus(self) -> set[int] | None:
        return None if self.load_cpu is None else {self.load_cpu}

    def hop_cpus(self) -> set[int] | None:
        return None if self.hop_cpu is None else {self.hop_cpu}


def plan(wanted: bool) -> Plan:
    if not wanted:
        return Plan(None, None, "turned off with --no-pin")
    if not hasattr(os, "sched_setaffinity"):
        return Plan(None, None, "this OS has no sched_setaffinity")
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return Plan(None, None, f"only {len(usable)} usable CPU")
    return Plan(usable[0], usable[1])


def pin_process(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (``taskset -a -p``); threads it starts later inherit the mask."""
    tasks = Path(f"/proc/{pid}/task")
    tids = [int(entry.name) for entry in tasks.iterdir()] if tasks.exists() else [pid]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)


def allowed_cpus(pid: int) -> str:
    """The kernel's ``Cpus_allowed_list`` of ``pid``, to show that the pinning took."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return "?"


def preexec(cpus: set[int] | None) -> None:
    """In a child before exec: its threads, present and future, inherit this mask."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
