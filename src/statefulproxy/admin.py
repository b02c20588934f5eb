"""``statefulproxy sessions list|show|export|import|delete``: one owner's sessions in a store (CONTRACT.md 7).

The owner is the one the proxy computes for ``--api-key KEY`` (with the same ``scope_secret``,
config file and environment: settings.load_settings), or ``--owner HASH`` given directly, or
``--anonymous`` (requests without a credential). The key is only hashed, never shown or kept.
``export`` writes one session a JSON line, oldest first (backup.py); ``import`` reads them back,
so that the listing keeps its order. Exit status: 0 done; 1 the store failed, or a session was not
found, skipped or refused; 2 a usage or configuration error. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import stat
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import BinaryIO, Literal, NoReturn

import orjson

from .asgi.api_models import session_object
from .backup import export_line, parse_line
from .errors import ClientError, ConfigError, StoreError
from .progress import ProgressBar
from .sessions.identity import SESSION_ID_PATTERN, owner_of
from .settings import Settings, load_settings
from .stores import Store, store_from_url
from .stores.base import SessionRecord, SessionStatus

PROG = "statefulproxy sessions"
_OWNER = re.compile(r"[0-9a-f]{32}")
_PAGE = 100  # sessions a listing reads at a time
_BATCH = 16  # sessions an export reads at once


class _UsageError(Exception):
    pass


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see {PROG} --help)")


def build_parser() -> argparse.ArgumentParser:
    common = _ArgumentParser(add_help=False)
    common.add_argument("--store", metavar="URL", help="the proxy's store: redis://..., redis+cluster://...")
    common.add_argument("--store-prefix", metavar="PREFIX", help="the proxy's store_prefix (default sp)")
    common.add_argument(
        "--config", metavar="FILE", help="the proxy's YAML config file (default: $STATEFULPROXY_CONFIG)"
    )
    owner = common.add_mutually_exclusive_group()
    owner.add_argument("--api-key", metavar="KEY", help="the sessions of this credential, as the proxy hashes it")
    owner.add_argument("--owner", metavar="HASH", help="the sessions of this owner (a keyed hash of a credential)")
    owner.add_argument("--anonymous", action="store_true", help="the sessions of requests without a credential")
    parser = _ArgumentParser(
        prog=PROG,
        description="List, show, export, import and delete the sessions of one owner in the proxy's store.",
        epilog="Settings (store, store_prefix, scope_secret) also come from STATEFULPROXY_<NAME> and the config file.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_ArgumentParser)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=summary, description=summary + ".")

    listing = command("list", "one session a line, newest first: id, status, messages, last active, title")
    listing.add_argument("--json", action="store_true", help="one session object a line, as the API shows it")
    listing.add_argument("--status", choices=("active", "ended", "expired"))
    command("show", "print a session object, as GET /v1/sessions/{id} shows it").add_argument("id")
    exporting = command("export", "write sessions to stdout, one JSON line each, with their messages, oldest first")
    exporting.add_argument("ids", nargs="*", metavar="ID", help="only these sessions (default: all of them)")
    importing = command("import", "read what export writes from stdin and restore those sessions, ids included")
    importing.add_argument("--replace", action="store_true", help="overwrite sessions that exist (default: skip)")
    command("delete", "delete sessions and their messages").add_argument("ids", nargs="+", metavar="ID")
    return parser


def main(argv: Sequence[str]) -> int:
    """Run one admin command; return the exit status."""
    try:
        args = build_parser().parse_args(argv)
        _check_args(args)
    except SystemExit as exc:  # --help, after printing
        return exc.code if isinstance(exc.code, int) else 0
    except _UsageError as exc:
        return _fail(str(exc), 2)
    try:
        cli = {"store": args.store, "store_prefix": args.store_prefix, "config": args.config}
        settings = load_settings(cli, os.environ)
        if settings.store.startswith("memory:"):
            raise ConfigError(
                "store: give the proxy's shared store with --store (redis://...); memory:// lives inside one proxy"
            )
        status = asyncio.run(_run(args, settings))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return status
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except StoreError as exc:
        return _fail(str(exc), 1)
    except BrokenPipeError:  # `... export | head`: nobody reads the rest
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _check_args(args: argparse.Namespace) -> None:
    if args.api_key is None and args.owner is None and not args.anonymous:
        raise _UsageError(f"name the owner: --api-key KEY, --owner HASH or --anonymous (see {PROG} --help)")
    if args.owner is not None and _OWNER.fullmatch(args.owner) is None:
        raise _UsageError("--owner: must be an owner hash, 32 hexadecimal digits")
    if args.api_key is not None and not args.api_key.strip():
        raise _UsageError("--api-key: must not be empty")
    for session_id in [args.id] if args.command == "show" else getattr(args, "ids", []):
        if SESSION_ID_PATTERN.fullmatch(session_id) is None:
            raise _UsageError(f"{session_id!r} is not a session id: 1-128 characters of A-Z a-z 0-9 . _ : -")


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    store = store_from_url(
        settings.store,
        ttl=settings.session_ttl,
        timeout=settings.store_timeout,
        key_prefix=settings.store_prefix,
        max_sessions_per_owner=settings.max_sessions_per_owner,
    )
    try:
        await store.open()
        owner = await owner_for(store, settings, api_key=args.api_key, owner=args.owner)
        return await _command(args, store, owner)
    finally:
        await store.aclose()


async def owner_for(store: Store, settings: Settings, *, api_key: str | None, owner: str | None) -> str:
    """The owner the proxy computes for ``api_key`` (None: no credential), unless ``owner`` names it."""
    if owner is not None:
        return owner
    secret = settings.scope_secret.encode() if settings.scope_secret else await store.owner_secret()
    return owner_of(None if api_key is None else api_key.strip().encode(), secret)


async def _command(args: argparse.Namespace, store: Store, owner: str) -> int:
    out = sys.stdout.buffer
    if args.command == "list":
        async for record in records(store, owner, order="desc", status=args.status):
            out.write(orjson.dumps(session_object(record)) + b"\n" if args.json else list_line(record))
        return 0
    if args.command == "show":
        found = await store.get(owner, args.id)
        if found is None:
            return _fail(f"no session {args.id!r} for this owner", 1)
        out.write(orjson.dumps(session_object(found)) + b"\n")
        return 0
    if args.command == "delete":
        status = 0
        for session_id in args.ids:
            if await store.delete(owner, session_id):
                out.write(f"deleted {session_id}\n".encode())
            else:
                status = _fail(f"no session {session_id!r} for this owner", 1)
        return status
    progress = ProgressBar(sys.stderr, args.command)

    def warn(message: str) -> None:
        progress.close()  # a message never lands on the bar's line
        print(f"{PROG}: {message}", file=sys.stderr)

    if args.command == "export":
        missing = await export_sessions(store, owner, out, args.ids, progress=progress)
        for session_id in missing:
            warn(f"error: no session {session_id!r} for this owner")
        progress.close()
        return 1 if missing else 0
    report = ImportReport()
    try:
        await import_sessions(
            store, owner, sys.stdin.buffer, report, replace=args.replace, warn=warn, progress=progress
        )
    except StoreError as exc:
        raise StoreError(f"{exc} (after importing {report.imported} sessions)") from exc
    finally:
        progress.close()
    print(report.summary(), file=sys.stderr)
    return 0 if report.complete else 1


async def records(
    store: Store, owner: str, *, order: Literal["asc", "desc"], status: SessionStatus | None = None
) -> AsyncIterator[SessionRecord]:
    """Every session of ``owner``, a page at a time."""
    after = None
    while True:
        page = await store.list_sessions(owner, limit=_PAGE, order=order, after=after, status=status)
        if page is None:  # the page's last session was deleted meanwhile: its place is lost
            raise StoreError("the sessions changed while they were listed (one was deleted); run it again")
        found, has_more = page
        for record in found:
            yield record
        if not has_more or not found:
            return
        after = found[-1].id


def list_line(record: SessionRecord) -> bytes:
    """``id  status  messages  last active (UTC)  title``, tab-separated."""
    active = datetime.fromtimestamp(record.last_active_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    title = " ".join((record.title or "").split())
    return f"{record.id}\t{record.status}\t{record.message_count}\t{active}\t{title}\n".encode()


async def export_sessions(
    store: Store, owner: str, out: BinaryIO, ids: Sequence[str] = (), *, progress: ProgressBar | None = None
) -> list[str]:
    """Write the lines of ``ids`` (default: all the owner's sessions, oldest first); the named ids not found."""
    wanted = list(ids) or [record.id async for record in records(store, owner, order="asc")]
    missing: list[str] = []
    for start in range(0, len(wanted), _BATCH):
        batch = wanted[start : start + _BATCH]
        for session_id, line in zip(
            batch, await asyncio.gather(*(_line(store, owner, sid) for sid in batch)), strict=True
        ):
            if line is not None:
                out.write(line + b"\n")
            elif ids:  # one the listing found and that went meanwhile is no error
                missing.append(session_id)
        done = start + len(batch)
        if progress is not None:
            progress.update(done / len(wanted), f"{done}/{len(wanted)} sessions")
    out.flush()
    return missing


async def _line(store: Store, owner: str, session_id: str) -> bytes | None:
    for attempt in range(3):
        messages = await store.messages(owner, session_id)
        record = await store.get(owner, session_id)
        if messages is None or record is None:
            return None
        # a turn that landed between the two reads changed the count: read again, then trust the messages
        if record.message_count == len(messages) or attempt == 2:
            return export_line(replace(record, message_count=len(messages)), messages)
    return None


@dataclass
class ImportReport:
    imported: int = 0
    skipped: int = 0  # the id exists (and no --replace)
    refused: int = 0  # a line that is not a session, or a session the store refused

    @property
    def complete(self) -> bool:
        return not (self.skipped or self.refused)

    def summary(self) -> str:
        return f"imported {self.imported} sessions, skipped {self.skipped} that exist, refused {self.refused}"


async def import_sessions(
    store: Store,
    owner: str,
    lines: Iterable[bytes],
    report: ImportReport,
    *,
    replace: bool = False,
    warn: Callable[[str], None],
    progress: ProgressBar | None = None,
) -> None:
    """Restore each line's session under ``owner``, counting in ``report``; ``warn`` gets a line for each
    session not imported. StoreError stops it."""
    total = _size(lines)
    read = 0
    for number, raw in enumerate(lines, 1):
        read += len(raw)
        if progress is not None:
            progress.update(None if total is None else read / total, f"{report.imported} sessions imported")
        if not raw.strip():
            continue
        try:
            restored = parse_line(raw)
        except ValueError as exc:
            warn(f"line {number}: {exc}")
            report.refused += 1
            continue
        session_id = restored.record.id
        try:
            restored_now = await store.restore(owner, restored, replace=replace)
        except ClientError as exc:  # the owner's session cap
            warn(f"line {number}: session {session_id!r}: {exc.message}")
            report.refused += 1
            continue
        if restored_now:
            report.imported += 1
        else:
            warn(f"line {number}: session {session_id!r} exists: skipped (--replace overwrites it)")
            report.skipped += 1


def _size(lines: Iterable[bytes]) -> int | None:
    """The size of a regular file being read, for the progress bar; None for a pipe or anything else."""
    try:
        info = os.fstat(lines.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) and info.st_size else None


def _fail(message: str, status: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status
