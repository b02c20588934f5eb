"""How the proxy logs: text or JSON lines, one incident one line, and nothing secret (CONTRACT.md section 7, Logs).

- ``log_config`` is the ``logging.config.dictConfig`` of a served proxy: uvicorn's own, with
  every line in the chosen format, the proxy's loggers beside uvicorn's.
- A JSON line is one object: ``time``, ``level``, ``logger``, ``message``, then the fields a
  line carries (``extra={"fields": {...}}``) and the ``request_id`` of the request it was
  logged in, if requests are logged.
- ``Incidents`` keeps a failure that repeats (the store is down: every request fails alike) to
  one line a minute, saying how many were left out; ``background_failure_handler`` logs a
  failed background task that way too, instead of asyncio's "exception was never retrieved"
  traceback.
- ``CutStreamFilter``: uvicorn logs "ASGI callable returned without completing response." at
  ERROR for every response the app returns from unfinished. The proxy does that on purpose to
  abort a client's connection (a cut upstream stream, a turn cut by ``max_turn_duration`` or
  shutdown) and logs why itself, so the line is dropped.
- ``redacted_query`` and ``redacted_url`` keep keys and passwords out of logged URLs.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import logging
import re
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import unquote_plus

import orjson

from .settings import LogFormat, Settings

logger = logging.getLogger("statefulproxy")

# the request a line is logged in (set only when requests are logged)
REQUEST_ID: Final[contextvars.ContextVar[str | None]] = contextvars.ContextVar("statefulproxy_request_id", default=None)

# a query parameter whose name contains one of these has its value logged as ***
_SECRET_PARAMETER = re.compile(r"key|token|secret|passw|pwd|signature|^sig$|auth|credential", re.IGNORECASE)
_MAX_LOGGED_QUERY = 512
INCIDENT_WINDOW: Final = 60.0  # seconds: one line per kind of failure per window


def redacted_query(query: str) -> str:
    """``query`` with the values of key-, token-, secret- and password-like parameters as ``***``."""
    if not query:
        return ""
    pairs = query[:_MAX_LOGGED_QUERY].split("&")
    for index, pair in enumerate(pairs):
        name, equals, _ = pair.partition("=")
        if equals and _SECRET_PARAMETER.search(unquote_plus(name)):
            pairs[index] = f"{name}=***"
    return "&".join(pairs) + ("..." if len(query) > _MAX_LOGGED_QUERY else "")


def redacted_url(url: str) -> str:
    """A store or upstream URL with the password of its user info and any secret parameter as ``***``."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    location, slash, path = rest.partition("/")
    userinfo, at, hosts = location.rpartition("@")
    if at and ":" in userinfo:
        location = f"{userinfo.partition(':')[0]}:***@{hosts}"
    path, question, query = path.partition("?")
    return f"{scheme}://{location}{slash}{path}{question}{redacted_query(query)}"


def log_startup(settings: Settings, version: str) -> None:
    """The one line that says what this process is: version, address, upstream(s), store, who may
    have sessions; and a warning when sessions die with the process."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"http://{host}:{settings.port}"
    upstreams = {route.prefix or "/": route.upstream for route in settings.route_table}
    store = redacted_url(settings.store)
    anonymous = not settings.require_credential
    shown = ", ".join(f"{prefix} -> {url}" for prefix, url in upstreams.items())
    logger.info(
        "statefulproxy %s on %s: %s %s; store %s; %s",
        version,
        address,
        "upstream" if len(upstreams) == 1 else "routes",
        upstreams["/"] if list(upstreams) == ["/"] else shown,
        store,
        "anonymous sessions allowed (require_credential: false)"
        if anonymous
        else "sessions need a credential (require_credential: true)",
        extra={
            "fields": {
                "event": "startup",
                "version": version,
                "address": address,
                "upstreams": upstreams,
                "store": store,
                "anonymous_sessions": anonymous,
                "workers": settings.workers,
            }
        },
    )
    if settings.store.startswith("memory:"):
        logger.warning(
            "store memory:// keeps sessions in this process only: they are lost when it stops or restarts "
            "(use a redis:// store to keep them)"
        )


class Incidents:
    """Which repeats of a failure to log: the first, then one a window, counting those left out."""

    def __init__(self, window: float = INCIDENT_WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._last: dict[object, float] = {}  # key -> when it was last logged
        self._left_out: dict[object, int] = {}

    def admit(self, key: object) -> int | None:
        """None: leave this one out; else log it, with how many like it were left out since the last."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._left_out.pop(key, 0)


class IncidentFilter(logging.Filter):
    """On the proxy's logger: a warning or error that repeats is logged once a window (``Incidents``)."""

    def __init__(self) -> None:
        super().__init__()
        self.incidents = Incidents()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        left_out = self.incidents.admit((record.name, record.levelno, record.msg))
        if left_out is None:
            return False
        if left_out:
            record.msg = f"{record.msg} (and {left_out} more like this in the last {INCIDENT_WINDOW:g} s)"
        return True


class CutStreamFilter(logging.Filter):
    """On uvicorn's error logger: drop its line for a response the app left unfinished on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "ASGI callable returned without completing response."


def background_failure_handler(incidents: Incidents) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """An event loop exception handler: a failed background task is one line an incident, not a traceback."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exception = context.get("exception")
        what = f"{type(exception).__name__}: {exception}" if exception is not None else str(context.get("message"))
        if incidents.admit(type(exception) if exception is not None else what) is not None:
            logger.error("background task failed: %s", what)
        if exception is not None:
            logger.debug("background task failed", exc_info=exception)

    return handle


class JsonFormatter(logging.Formatter):
    """One JSON object a line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if "request_id" not in line and (request_id := REQUEST_ID.get()) is not None:
            line["request_id"] = request_id
        if record.exc_info and record.exc_info[1] is not None:
            line["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            line["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def log_config(uvicorn_config: dict[str, Any], level: str, log_format: LogFormat) -> dict[str, Any]:
    """``uvicorn_config`` (uvicorn's logging config, a copy to change) in ``log_format``, with the
    proxy's loggers at ``level``."""
    config = uvicorn_config
    config["filters"] = {
        "incidents": {"()": IncidentFilter},
        "cut_streams": {"()": CutStreamFilter},
    }
    if log_format == "json":
        config["formatters"] = {"default": {"()": JsonFormatter}, "access": {"()": JsonFormatter}}
    config["handlers"]["requests"] = {
        "formatter": "default",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stdout",
    }
    config["loggers"]["uvicorn.error"] = {**config["loggers"].get("uvicorn.error", {}), "filters": ["cut_streams"]}
    upper = level.upper()
    config["loggers"]["statefulproxy"] = {
        "handlers": ["default"],
        "level": upper,
        "propagate": False,
        "filters": ["incidents"],
    }
    # one line per request, on stdout like uvicorn's access log (which the proxy's replaces)
    config["loggers"]["statefulproxy.access"] = {"handlers": ["requests"], "level": "INFO", "propagate": False}
    # everything else (asyncio, aiohttp, ...) in the same format, not Python's bare last resort
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config
