"""What the RESP client is told: where Redis is (RespAddress) and the Lua scripts it runs (Script)."""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RespAddress:
    """Where and how to connect: TCP ``host:port`` (TLS when ``ssl`` is set) or the unix socket ``path``.

    ``server_hostname`` is the name the TLS certificate must carry (None: ``host``).
    ``timeout`` / ``connect_timeout``, when set (a URL's ``socket_timeout`` /
    ``socket_connect_timeout``), override the client's own. ``max_connections`` caps the
    client's pool.
    """

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: ssl.SSLContext | None = None
    path: str | None = None
    server_hostname: str | None = None
    timeout: float | None = None
    connect_timeout: float | None = None
    keepalive: bool = True
    client_name: str | None = None
    max_connections: int | None = None

    @property
    def where(self) -> str:
        """The address for messages: ``host:port`` or the socket's path."""
        return self.path if self.path is not None else f"{self.host}:{self.port}"


class Script:
    """A Lua script run by EVALSHA, loaded with EVAL when Redis does not know it yet."""

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest().encode()
