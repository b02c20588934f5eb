"""``--profile``: py-spy on the proxy for one cell, and the top costs as short markdown tables.

py-spy (a dev tool, not a dependency) samples the proxy's Python stacks during the measured window and
writes them as collapsed stacks (``frame;frame;... count``). A frame's cost per request is its share of the
samples times the proxy's CPU per request measured from /proc in the same window. A Python frame's self
time includes the C code it calls (orjson, hiredis, httptools, uvloop's transports) unless ``--native``
is given; samples whose innermost Python frame is the loop's runner are uvloop's own C code (callbacks,
socket I/O, and any epoll wait py-spy did not see as idle).

A kept stack file (``run.py --profile-raw DIR``) can be tabled again without rerunning:

    python bench/profiling.py DIR/redis10-16-json.folded --cpu-us 538
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

OWN = "statefulproxy/"
LOOP_RUNNERS = {"Runner.run", "run_until_complete", "run_forever", "_run_once", "Handle._run"}
EVENT_LOOP = "event loop (uvloop C)"
NO_OWN_FRAME = "(no statefulproxy frame: server, client and event loop)"
MODES = {"json": False, "stream": True}


@dataclass(frozen=True)
class Cell:
    key: str
    concurrency: int
    stream: bool

    @property
    def name(self) -> str:
        return f"{self.key}:{self.concurrency}:{'stream' if self.stream else 'json'}"


def parse_cells(spec: str, keys: Sequence[str]) -> list[Cell]:
    """``redis10:16:json,stateless:16:json`` -> cells; ValueError with the reason when a part is wrong."""
    cells = []
    for part in (word.strip() for word in spec.split(",")):
        if not part:
            continue
        pieces = part.split(":")
        if len(pieces) != 3:
            raise ValueError(f"{part!r}: expected CONFIG:CONCURRENCY:MODE, e.g. redis10:16:json")
        key, concurrency, mode = pieces
        if key not in keys:
            raise ValueError(f"{part!r}: unknown configuration {key!r}; choose from {list(keys)}")
        if not concurrency.isdigit() or int(concurrency) < 1:
            raise ValueError(f"{part!r}: concurrency must be a positive integer")
        if mode not in MODES:
            raise ValueError(f"{part!r}: mode must be one of {sorted(MODES)}")
        cells.append(Cell(key, int(concurrency), MODES[mode]))
    if not cells:
        raise ValueError("no cell given")
    return cells


def find_py_spy() -> str | None:
    return shutil.which("py-spy")


@dataclass
class Recorder:
    """``py-spy record`` attached to one pid from ``start()`` until ``stop()``."""

    binary: str
    output: Path
    rate: int
    native: bool
    process: subprocess.Popen[bytes] | None = None
    problem: str = ""

    def start(self, pid: int) -> None:
        argv = [self.binary, "record", "--pid", str(pid), "--format", "raw", "--output", str(self.output)]
        argv += ["--rate", str(self.rate), "--nolineno", "--subprocesses"]
        if self.native:
            argv.append("--native")
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def signal_stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C

    def finish(self) -> str | None:
        """The collapsed stacks, or None with ``problem`` set."""
        if self.process is None:
            self.problem = "py-spy was not started"
            return None
        self.signal_stop()
        try:
            output, _ = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        if not self.output.exists():
            tail = " | ".join(output.decode(errors="replace").strip().splitlines()[-3:])
            self.problem = f"py-spy wrote nothing (exit status {self.process.returncode}): {tail}"
            return None
        return self.output.read_text(errors="replace")


Stack = tuple[str, ...]


def parse_folded(text: str) -> Counter[Stack]:
    stacks: Counter[Stack] = Counter()
    for line in text.splitlines():
        frames, _, count = line.rstrip().rpartition(" ")
        if frames and count.isdigit():
            stacks[tuple(frames.split(";"))] += int(count)
    return stacks


def _function(frame: str) -> str:
    return frame.split(" (", 1)[0]


def _file(frame: str) -> str:
    return frame.rsplit(" (", 1)[1].rstrip(")") if " (" in frame else ""


def _is_runner(frame: str) -> bool:
    return _function(frame) in LOOP_RUNNERS and _file(frame).startswith(("asyncio/", "uvloop/"))


def callback_stack(stack: Stack) -> Stack:
    """The part of a stack below the event loop's runner: what one callback or task step does. The frames
    above it (runpy, the CLI, uvicorn's startup) are in every sample and say nothing; a sample that ends
    in the runner itself is uvloop's C code."""
    cut = max((index for index, frame in enumerate(stack) if _is_runner(frame)), default=-1)
    if cut == len(stack) - 1:
        return (EVENT_LOOP,)
    return stack[cut + 1 :]


def package(frame: str) -> str:
    """What a frame belongs to: the top-level package of its file (py-spy prints paths from sys.path on)."""
    if frame == EVENT_LOOP:
        return EVENT_LOOP
    path = _file(frame)
    if path == "<string>":
        return "generated code (dataclass __init__ etc.)"
    if path.startswith("<"):
        return path.split(" ", 1)[0].strip("<>") or "?"
    return path.split("/", 1)[0].removesuffix(".py") or "?"


def short(frame: str) -> str:
    """``ChatTurn.run (statefulproxy/asgi/chat.py)`` -> ``ChatTurn.run (asgi/chat.py)``."""
    return frame.replace(f"({OWN}", "(", 1)


def _is_own(frame: str) -> bool:
    return _file(frame).startswith(OWN)


def _module(frame: str) -> str:
    return _file(frame).removeprefix(OWN)


@dataclass
class Profile:
    """Sample counts of one profiled cell; ``us(samples)`` turns a count into µs of proxy CPU per request.

    ``own`` charges each sample to the deepest statefulproxy frame on its stack: that function's own work
    plus the library code it calls directly (not other statefulproxy functions it calls)."""

    stacks: Counter[Stack]
    us_per_request: float  # the proxy's CPU per request from /proc in the profiled window
    total: int = 0
    self_samples: Counter[str] = field(default_factory=Counter)  # leaf frame -> samples
    inclusive: Counter[str] = field(default_factory=Counter)  # frame anywhere on the stack -> samples
    by_package: Counter[str] = field(default_factory=Counter)  # package of the leaf -> samples
    own: Counter[str] = field(default_factory=Counter)  # deepest statefulproxy frame (or NO_OWN_FRAME) -> samples
    under: dict[str, Counter[str]] = field(default_factory=dict)  # deepest statefulproxy frame -> leaf package
    caller: dict[str, Counter[str]] = field(default_factory=dict)  # leaf frame -> deepest statefulproxy frame
    module_inclusive: Counter[str] = field(default_factory=Counter)  # statefulproxy module on the stack
    module_own: Counter[str] = field(default_factory=Counter)  # module of the deepest statefulproxy frame

    def __post_init__(self) -> None:
        for full, count in self.stacks.items():
            stack = callback_stack(full)
            self.total += count
            leaf = stack[-1]
            self.self_samples[leaf] += count
            self.by_package[package(leaf)] += count
            for frame in set(stack):
                self.inclusive[frame] += count
            for module in {_module(frame) for frame in stack if _is_own(frame)}:
                self.module_inclusive[module] += count
            own = next((frame for frame in reversed(stack) if _is_own(frame)), NO_OWN_FRAME)
            self.own[own] += count
            if own != NO_OWN_FRAME:
                self.module_own[_module(own)] += count
            self.under.setdefault(own, Counter())[package(leaf)] += count
            self.caller.setdefault(leaf, Counter())[own] += count

    def us(self, samples: int) -> float:
        return samples * self.us_per_request / self.total if self.total else 0.0


def _us(value: float) -> str:
    return f"{value:,.1f}" if value < 10 else f"{value:,.0f}"


def _pct(samples: int, total: int) -> str:
    return f"{100 * samples / total:.1f}%" if total else "—"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def own_table(profile: Profile, top: int) -> str:
    """statefulproxy functions by their own cost (self + the libraries they call directly), with inclusive time."""
    rows = []
    for frame, samples in profile.own.most_common(top):
        below = profile.under.get(frame, Counter())
        libraries = [f"{name} {_us(profile.us(n))}" for name, n in below.most_common() if name != "statefulproxy"][:3]
        own = frame != NO_OWN_FRAME
        rows.append(
            [
                short(frame),
                _us(profile.us(samples)),
                _pct(samples, profile.total),
                _us(profile.us(profile.self_samples[frame])) if own else "—",
                " · ".join(libraries) or "—",
                _us(profile.us(profile.inclusive[frame])) if own else "—",
            ]
        )
    header = ["statefulproxy function", "own µs/req", "share", "self", "libraries it calls, µs/req", "inclusive"]
    return _table(header, rows)


def module_table(profile: Profile, top: int) -> str:
    rows = [
        [module, _us(profile.us(samples)), _us(profile.us(profile.module_own[module]))]
        for module, samples in profile.module_inclusive.most_common(top)
    ]
    return _table(["statefulproxy module", "inclusive µs/req", "own µs/req"], rows)


def self_table(profile: Profile, top: int) -> str:
    rows = []
    for frame, samples in profile.self_samples.most_common(top):
        caller = profile.caller[frame].most_common(1)[0][0]
        shown = "—" if caller in (frame, NO_OWN_FRAME) else short(caller)
        rows.append([short(frame), package(frame), _us(profile.us(samples)), _pct(samples, profile.total), shown])
    return _table(["frame (self time)", "package", "µs/req", "share", "deepest statefulproxy caller"], rows)


def package_table(profile: Profile, top: int) -> str:
    rows = [
        [name, _us(profile.us(samples)), _pct(samples, profile.total)]
        for name, samples in profile.by_package.most_common(top)
    ]
    return _table(["package (self time)", "µs/req", "share"], rows)


def comparison_table(profiles: Sequence[tuple[str, Profile]], top: int) -> str:
    """Self time by package for every profiled cell side by side (and the difference of the last two)."""
    names: Counter[str] = Counter()
    for _, profile in profiles:
        for name, samples in profile.by_package.items():
            names[name] += round(profile.us(samples))
    header = ["package (self time), µs/req", *(cell for cell, _ in profiles)]
    if len(profiles) >= 2:
        header.append(f"{profiles[-1][0]} minus {profiles[-2][0]}")
    rows = []
    for name, _ in names.most_common(top):
        figures = [profile.us(profile.by_package[name]) for _, profile in profiles]
        row = [name, *(_us(figure) for figure in figures)]
        if len(figures) >= 2:
            row.append(f"{figures[-1] - figures[-2]:+,.0f}")
        rows.append(row)
    totals = [profile.us_per_request for _, profile in profiles]
    total_row = ["**total (proxy CPU µs/req)**", *(_us(total) for total in totals)]
    if len(totals) >= 2:
        total_row.append(f"{totals[-1] - totals[-2]:+,.0f}")
    return _table(header, [*rows, total_row])


def render(cell: str, headline: str, profile: Profile, top: int) -> str:
    return "\n".join(
        [
            f"### Profile of the proxy: {cell}",
            "",
            headline,
            "",
            own_table(profile, top),
            "",
            module_table(profile, top),
            "",
            self_table(profile, top),
            "",
            package_table(profile, top),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Table a py-spy collapsed-stack file (format raw) of the proxy.")
    parser.add_argument("stacks", type=Path, help="the .folded file run.py --profile-raw kept")
    parser.add_argument("--cpu-us", type=float, required=True, help="the proxy's CPU µs/req in that window")
    parser.add_argument("--top", type=int, default=12, help="rows per table (default 12)")
    args = parser.parse_args(argv)
    try:
        text = args.stacks.read_text(errors="replace")
    except OSError as exc:
        parser.error(f"cannot read {args.stacks}: {exc.strerror}")
    profile = Profile(parse_folded(text), args.cpu_us)
    if not profile.total:
        parser.error(f"{args.stacks} holds no collapsed stacks")
    print(render(args.stacks.stem, f"{profile.total:,} samples from {args.stacks}.", profile, args.top))


if __name__ == "__main__":
    main()
