"""Where a ``redis://``, ``rediss://`` or ``unix://`` store URL points, read as redis-py reads it.

redis-py's ``parse_url`` does the parsing (CONTRACT.md: store URLs "as in redis-py"). Every
option it would pass to a plain connection is either honoured here or refused with a
ValueError naming it: an option silently ignored would be a setting that looks applied and
is not. Pool-level options of redis-py (``max_connections`` aside) and those that only
shape redis-py's own replies have no meaning for this client and are refused.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from .resp import RespAddress

__all__ = ["address_from_url"]

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_SSL_OPTIONS = frozenset(
    {
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_ca_data",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
        "ssl_include_verify_flags",
        "ssl_exclude_verify_flags",
    }
)
_PLAIN_OPTIONS = frozenset(
    {
        "db",
        "username",
        "password",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "client_name",
        "max_connections",
        "protocol",
        "retry_on_timeout",
        "health_check_interval",
    }
)
# Options that are accepted only with the value that describes what this client does anyway.
_ONLY_DEFAULT = {
    "retry_on_timeout": (False, "a command that timed out is never retried"),
    "health_check_interval": (0, "idle connections are not health-checked (a watchdog fails overdue replies)"),
}


def address_from_url(url: str) -> RespAddress:
    """The RespAddress a store URL names; ValueError naming the option when one cannot be honoured."""
    options: dict[str, Any] = dict(parse_url(url))
    _refuse_ambiguous(url)
    connection_class = options.pop("connection_class", None)
    unix = connection_class is UnixDomainSocketConnection
    tls = connection_class is SSLConnection
    _refuse_unsupported(options, {"path"} if unix else {"host", "port"})
    _check_db(url, options, unix)
    protocol = options.get("protocol")
    if protocol not in (None, 2):
        raise ValueError(f"redis URL option 'protocol={protocol}' is not supported: this client speaks RESP2 only")
    for name, (value, why) in _ONLY_DEFAULT.items():
        if name in options and options[name] != value:
            raise ValueError(f"redis URL option '{name}' is not supported: {why}")
    given_ssl = sorted(_SSL_OPTIONS.intersection(options))
    if given_ssl and not tls:
        raise ValueError(f"redis URL option '{given_ssl[0]}' needs a rediss:// URL")
    if unix and (urlsplit(url).hostname or not options.get("path")):
        raise ValueError("redis URL 'unix://' takes the socket's path and no host, as in unix:///run/redis.sock")
    return RespAddress(
        host=options.get("host", "127.0.0.1"),
        port=int(options.get("port", 6379)),
        path=options["path"] if unix else None,
        db=int(options.get("db", 0)),
        username=options.get("username"),
        password=options.get("password"),
        ssl=_ssl_context(options) if tls else None,
        timeout=_positive(options, "socket_timeout"),
        connect_timeout=_positive(options, "socket_connect_timeout"),
        keepalive=options.get("socket_keepalive", True),
        client_name=options.get("client_name"),
        max_connections=_max_connections(options),
    )


def _refuse_ambiguous(url: str) -> None:
    # Where redis-py would quietly drop a value: a repeated option (the first one wins), a
    # query value the URL's own part overrides, or a query naming where to connect.
    parts = urlsplit(url)
    for name, values in parse_qs(parts.query).items():
        if len(values) > 1:
            raise ValueError(f"redis URL option '{name}' is given {len(values)} times")
        if name in ("host", "port", "path", "connection_class"):
            raise ValueError(f"redis URL option '{name}' is not supported: write it in the URL itself")
        if (name == "username" and parts.username) or (name == "password" and parts.password):
            raise ValueError(f"redis URL option '{name}' is given twice (before the host and in the query)")
        if name == "db" and parts.scheme != "unix" and parts.path.strip("/"):
            raise ValueError("redis URL option 'db' is given twice (as the path and in the query)")


def _refuse_unsupported(options: dict[str, Any], location: set[str]) -> None:
    for name in sorted(options):
        if name not in _PLAIN_OPTIONS and name not in _SSL_OPTIONS and name not in location:
            raise ValueError(f"redis URL option '{name}' is not supported by the store's Redis client")


def _check_db(url: str, options: dict[str, Any], unix: bool) -> None:
    # redis-py silently ignores a path that is not a number (redis://host/cache): refuse it.
    path = "" if unix else unquote(urlsplit(url).path).replace("/", "")
    if path and not path.isdigit():
        raise ValueError(f"redis URL path '/{path}' is not a database number ('db')")
    if int(options.get("db", 0)) < 0:
        raise ValueError("redis URL option 'db' must not be negative")


def _positive(options: dict[str, Any], name: str) -> float | None:
    value = options.get(name)
    if value is None:
        return None
    if not value > 0:
        raise ValueError(f"redis URL option '{name}' must be a positive number of seconds")
    return float(value)


def _max_connections(options: dict[str, Any]) -> int | None:
    value = options.get("max_connections")
    if value is not None and value < 1:
        raise ValueError("redis URL option 'max_connections' must be at least 1")
    return None if value is None else int(value)


def _ssl_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context redis-py's RedisSSLContext builds from the same options."""
    cert_reqs = options.get("ssl_cert_reqs", "required")
    if cert_reqs not in _CERT_REQS:
        raise ValueError(f"redis URL option 'ssl_cert_reqs' must be none, optional or required, not {cert_reqs!r}")
    context = ssl.create_default_context()
    verify_mode = _CERT_REQS[cert_reqs]
    # as in redis-py: no certificate check means no hostname check, whatever ssl_check_hostname says
    context.check_hostname = verify_mode != ssl.CERT_NONE and options.get("ssl_check_hostname", True)
    context.verify_mode = verify_mode
    for flag in options.get("ssl_include_verify_flags") or ():
        context.verify_flags |= flag
    for flag in options.get("ssl_exclude_verify_flags") or ():
        context.verify_flags &= ~flag
    certfile, keyfile = options.get("ssl_certfile"), options.get("ssl_keyfile")
    if keyfile and not certfile:
        raise ValueError("redis URL option 'ssl_keyfile' needs 'ssl_certfile' too")
    if certfile:
        try:
            context.load_cert_chain(certfile, keyfile, options.get("ssl_password"))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"redis URL option 'ssl_certfile': cannot load {certfile}: {exc}") from exc
    cafile, capath, cadata = options.get("ssl_ca_certs"), options.get("ssl_ca_path"), options.get("ssl_ca_data")
    if cafile or capath or cadata:
        try:
            context.load_verify_locations(cafile=cafile, capath=capath, cadata=cadata)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"redis URL option 'ssl_ca_certs': cannot load {cafile or capath}: {exc}") from exc
    if options.get("ssl_min_version") is not None:
        try:
            context.minimum_version = ssl.TLSVersion(options["ssl_min_version"])
        except ValueError as exc:
            raise ValueError(f"redis URL option 'ssl_min_version' is not a TLS version: {exc}") from exc
    if options.get("ssl_ciphers"):
        try:
            context.set_ciphers(options["ssl_ciphers"])
        except ssl.SSLError as exc:
            raise ValueError(f"redis URL option 'ssl_ciphers': {exc}") from exc
    return context
