"""The benchmark's configurations and command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import profiling
from report import Config

CONFIGS = [
    Config("direct", "(a) direct to upstream", "upstream"),
    Config("ref", "(ref) aiohttp relay", "relay"),
    Config("stateless", "(b) proxy, no session", "proxy-redis"),
    Config("redis10", "(c) proxy, Redis session, 10 msgs", "proxy-redis", history=10, uses=3, redis=True),
    Config("redis200", "(d) proxy, Redis session, 200 msgs", "proxy-redis", history=200, uses=11, redis=True),
    Config("memory10", "(e) proxy, memory session, 10 msgs", "proxy-memory", history=10, uses=3),
]
LETTERS = {"a": "direct", "b": "stateless", "c": "redis10", "d": "redis200", "e": "memory10"}
DEFAULT_CONCURRENCY = "16,64"


def parse_concurrencies(text: str) -> list[int]:
    """``16,64`` -> [1, 16, 64]: concurrency 1 is always run; ValueError on anything but positive integers."""
    found = {1}
    for word in (part.strip() for part in text.split(",")):
        if not word.isdigit() or int(word) < 1:
            raise ValueError(f"{word!r} is not a positive integer")
        found.add(int(word))
    return sorted(found)


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--duration", type=float, help="measured seconds per cell, split over the repetitions (default 6, --quick 0.3)"
    )
    parser.add_argument("--warmup", type=float, help="warm-up s before each repetition (default 0.5, --quick 0.15)")
    parser.add_argument("--repeat", type=int, help="repetitions of the matrix, interleaved (default 3, --quick 1)")
    parser.add_argument(
        "--concurrency",
        default=DEFAULT_CONCURRENCY,
        help=f"comma-separated concurrencies; 1 is always run as well (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument("--quick", action="store_true", help="short runs for a smoke test")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the processes to CPUs (default: pin where possible)"
    )
    parser.add_argument(
        "--profile",
        metavar="CELLS",
        help="instead of the matrix, run py-spy on the proxy for these cells, e.g. redis10:16:json"
        "[,stateless:16:json] (mode json or stream), and print the top costs",
    )
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second (default 250)")
    parser.add_argument("--profile-top", type=int, default=12, help="rows per profile table (default 12)")
    parser.add_argument("--profile-native", action="store_true", help="py-spy --native: C frames too (slower)")
    parser.add_argument("--profile-raw", type=Path, metavar="DIR", help="keep py-spy's collapsed stacks in DIR")
    parser.add_argument("--only", help="comma-separated configurations: direct,ref,stateless,redis10,redis200,memory10")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run wait up to this long for other processes to leave the machine idle (default 0: off)",
    )
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and print where")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 0.3 if args.quick else 6.0
    if args.warmup is None:
        args.warmup = 0.15 if args.quick else 0.5
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--repeat must be ≥ 1, --duration > 0, --warmup ≥ 0")
    keys = [config.key for config in CONFIGS]
    if args.only:
        wanted = {LETTERS.get(word.strip(), word.strip()) for word in args.only.split(",") if word.strip()}
        unknown = wanted - set(keys)
        if unknown:
            parser.error(f"unknown configuration(s) {sorted(unknown)}; choose from {keys} or letters a-e")
        args.configs = [config for config in CONFIGS if config.key in wanted]
    else:
        args.configs = list(CONFIGS)
    try:
        args.concurrencies = parse_concurrencies(args.concurrency)
    except ValueError as exc:
        parser.error(f"--concurrency: {exc}")
    args.cells = []
    if args.profile:
        try:
            args.cells = profiling.parse_cells(args.profile, keys)
        except ValueError as exc:
            parser.error(f"--profile: {exc}")
        if any(config_by_key(cell.key).hop not in ("proxy-redis", "proxy-memory") for cell in args.cells):
            parser.error(
                "--profile: only the proxy configurations (stateless, redis10, redis200, memory10) run the proxy"
            )
        if args.profile_rate < 1 or args.profile_top < 1:
            parser.error("--profile-rate and --profile-top must be ≥ 1")
        args.configs = [config for config in CONFIGS if config.key in {cell.key for cell in args.cells}]
        args.repeat = 1
    return args


def config_by_key(key: str) -> Config:
    return next(config for config in CONFIGS if config.key == key)
