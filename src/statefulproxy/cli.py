"""The ``statefulproxy`` command: flags -> Settings -> uvicorn serving the proxy app."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, get_args

from statefulproxy import __version__
from statefulproxy.errors import ConfigError, StoreError
from statefulproxy.settings import LogLevel, Settings, load_settings
from statefulproxy.stores import store_from_url

Runner = Callable[[Settings], None]

_UPSTREAM_REQUIRED = (
    "upstream: required (--upstream, STATEFULPROXY_UPSTREAM or `upstream` in the config file), unless `routes` are set"
)


class _UsageError(Exception):
    pass


class _ArgumentParser(argparse.ArgumentParser):
    # argparse prints the usage block and exits itself; we want one line, printed by main().
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see statefulproxy --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="statefulproxy",
        description="A reverse proxy that adds server-side conversation sessions to a stateless LLM API.",
        epilog="Every setting can also come from STATEFULPROXY_<NAME> or the config file "
        "(see config.example.yaml). Precedence: flag > environment > config file > default. "
        "`statefulproxy sessions --help`: list, export and import sessions.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--upstream", metavar="URL", help="the API to forward to, e.g. https://api.openai.com (mock://: a built-in one)"
    )
    parser.add_argument("--store", metavar="URL", help="memory:// (default), redis://host:port/db or rediss://...")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", help="port to listen on (default 8080)")
    parser.add_argument("--workers", metavar="N", help="worker processes on the port (default 1; needs a shared store)")
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: $STATEFULPROXY_CONFIG)")
    parser.add_argument("--log-level", metavar="{" + ",".join(get_args(LogLevel)) + "}", help="default info")
    parser.add_argument("--version", action="version", version=f"statefulproxy {__version__}")
    return parser


def main(argv: Sequence[str] | None = None, *, run: Runner | None = None) -> int:
    """Run the proxy; return the exit status. `run` serves the settings (default: uvicorn)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sessions":  # the admin commands
        from statefulproxy.admin import main as admin_main

        return admin_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help and --version, after printing
        return exc.code if isinstance(exc.code, int) else 0
    except _UsageError as exc:
        return _fail(str(exc))
    try:
        cli = vars(args)
        settings = load_settings(cli, os.environ)
        if not settings.route_table:
            raise ConfigError(_UPSTREAM_REQUIRED)
        if settings.workers > 1 and settings.store.startswith("memory:"):
            raise ConfigError(
                f"workers: {settings.workers} workers need a shared store (redis://...); memory:// lives in one process"
            )
        _check_metrics_port(settings)
        if run is None:
            check_store_credentials(settings)
        (run or functools.partial(serve, cli=cli))(settings)
    except ConfigError as exc:
        return _fail(str(exc))
    return 0


def _check_metrics_port(settings: Settings) -> None:
    if settings.metrics_port is None:
        return
    if settings.metrics_port == settings.port:
        raise ConfigError(f"metrics_port: {settings.metrics_port} is the proxy's port; /metrics is served there anyway")
    if settings.workers > 1:
        raise ConfigError(
            f"metrics_port: {settings.workers} workers cannot share one metrics port; leave it unset and "
            "scrape /metrics on the proxy's port, or run one worker per container"
        )


def check_store_credentials(settings: Settings) -> None:
    """ConfigError if the store refuses the configured credentials. A store that is down is no
    error here: the proxy starts, ``/readyz`` says 503 and the client reconnects by itself."""
    if settings.store.startswith("memory:"):
        return
    store = store_from_url(settings.store, ttl=settings.session_ttl, timeout=settings.store_timeout)

    async def check() -> None:
        try:
            await store.open()
        except StoreError:
            pass
        finally:
            await store.aclose()

    asyncio.run(check())


def serve(settings: Settings, cli: dict[str, Any] | None = None) -> None:
    """Serve the proxy with uvicorn until it is stopped."""
    from statefulproxy.server import serve as serve_with_uvicorn

    serve_with_uvicorn(settings, cli)


def _fail(message: str) -> int:
    print(f"statefulproxy: error: {message}", file=sys.stderr)
    return 2
