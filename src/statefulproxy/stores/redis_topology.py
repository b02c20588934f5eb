"""What the Redis Cluster and Sentinel clients share: multi-node store URLs, and which failed commands go again.

A command is sent again only when it surely never ran: refused before it was written
(cannot connect; an error reply such as CLUSTERDOWN, TRYAGAIN, LOADING or READONLY that
Redis gives before running anything), or when it only reads. A write whose connection died
after it was written may have run: sending it again could apply a turn twice, so it fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from urllib.parse import unquote

from ..errors import ConfigError
from .resp import Arg, RespAddress, RespError

Node = tuple[str, int]

FIRST_DELAY = 0.02  # seconds before the first retry; doubles up to MAX_DELAY
MAX_DELAY = 0.2
# Commands that change nothing (or set what they set again): safe to send twice.
READS = frozenset(
    {b"PING", b"ECHO", b"GET", b"HGET", b"HGETALL", b"HMGET", b"EXISTS", b"PTTL", b"TTL", b"ZSCORE", b"ZCARD"}
    | {b"ZRANGEBYSCORE", b"ZREVRANGEBYSCORE", b"LRANGE", b"SCRIPT", b"INFO", b"ROLE", b"CLUSTER", b"DBSIZE"}
)
# Error replies of commands that were refused before running: sending them again is safe.
_REFUSED = ("TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN", "READONLY", "NOREPLICAS")
_UNSENT_MESSAGES = ("cannot connect", "connection to redis is closed")


class Unreachable(ConnectionError):
    """No node could be asked where to send a command: nothing was sent."""


def command_name(args: Sequence[Arg]) -> bytes:
    first = args[0]
    return (first if isinstance(first, bytes) else str(first).encode()).upper()


def unsent(exc: BaseException) -> bool:
    """Whether a failed command surely never reached Redis, so that sending it again cannot run it twice."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (ConnectionRefusedError, Unreachable)) or str(seen).startswith(_UNSENT_MESSAGES):
            return True
        seen = seen.__cause__
    return False


def refused(exc: RespError) -> bool:
    """Whether an error reply says the command did not run (a script refused on a replica says so inside)."""
    message = str(exc)
    return message.startswith(_REFUSED) or "-READONLY" in message


class Backoff:
    """Retry pacing of one command: how long to wait next, and whether the deadline allows it."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._deadline: float | None = None
        self._delay = FIRST_DELAY

    async def wait(self, error: BaseException) -> None:
        """Sleep before the next attempt; re-raise ``error`` when that would pass the deadline."""
        now = asyncio.get_running_loop().time()
        if self._deadline is None:
            self._deadline = now + self._timeout
        if now + self._delay > self._deadline:
            raise error
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, MAX_DELAY)


def hosts_from_url(url: str, scheme: str, default_port: int) -> tuple[list[RespAddress], str]:
    """The nodes of ``scheme://[user:password@]host:port[,host:port...][/path]``, and the path.

    Raises ConfigError naming the problem (never echoing the password).
    """

    def invalid(problem: str) -> ConfigError:
        return ConfigError(f"store: invalid {scheme} URL: {problem}")

    rest = url.partition("://")[2]
    rest, question, query = rest.partition("?")
    if question:
        raise invalid(f"options (?{query.split('=')[0]}...) are not supported")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts_part = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if colon else None)
    addresses = []
    for item in hosts_part.split(","):
        host, port = _host_port(item.strip(), default_port, invalid)
        addresses.append(RespAddress(host=host, port=port, username=username, password=password))
    return addresses, slash + path


def _host_port(item: str, default_port: int, invalid: Callable[[str], ConfigError]) -> Node:
    if not item:
        raise invalid("a host is missing (expected host:port[,host:port...])")
    if item.startswith("["):  # [IPv6]:port
        host, _, after = item[1:].partition("]")
        port_text = after.removeprefix(":")
    else:
        host, colon, port_text = item.rpartition(":")
        if not colon:
            host, port_text = item, ""
    if not host:
        raise invalid(f"no host in {item!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise invalid(f"port {port_text!r} of {host} is not a port number")
    return host, int(port_text)
