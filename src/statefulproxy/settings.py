"""Settings: one frozen object, built once at startup.

Every setting has one name: the YAML key, the keyword argument, and, upper-cased behind
``STATEFULPROXY_``, the environment variable. Precedence, per key: command line >
environment > config file > default. A bad value raises ConfigError with a one-line message
that starts with the key's name and says where the value came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

import yaml

from statefulproxy import settings_values as values
from statefulproxy.errors import ConfigError
from statefulproxy.routes import PROFILES, Profile, Route, parse_namespaces, parse_routes

__all__ = [
    "CLIENT_TIMEOUTS_STATE",
    "CONFIG_ENV",
    "ENV_PREFIX",
    "LogFormat",
    "LogLevel",
    "ReplayReasoning",
    "Settings",
    "load_settings",
    "resolve_upstream_api_key",
    "settings_from_mapping",
]

LogLevel = Literal["critical", "error", "warning", "info", "debug"]
LogFormat = Literal["text", "json"]
OnBusy = Literal["wait", "reject"]
OnStoreError = Literal["fail", "passthrough"]
ReplayReasoning = Literal["auto", "none", "reasoning_content", "reasoning"]  # auto: the route's profile decides

ENV_PREFIX: Final = "STATEFULPROXY_"
# the lifespan state key the app publishes (client_header_timeout, client_body_timeout) under, for the server
CLIENT_TIMEOUTS_STATE: Final = "statefulproxy.client_timeouts"
CONFIG_ENV: Final = "STATEFULPROXY_CONFIG"


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything the proxy and the middleware are configured with.

    Constructing it validates and normalises every field (the same rules as
    `settings_from_mapping`), so an instance is always valid. Durations are seconds,
    sizes bytes; ``None`` for `session_ttl` / `read_timeout` means no limit.
    """

    upstream: str | None = None
    store: str = "memory://"
    store_prefix: str = "sp"
    workers: int = 1
    host: str = "127.0.0.1"
    port: int = 8080
    session_ttl: float | None = 86400.0
    session_headers: tuple[str, ...] = ("session-id", "x-session-id", "sessionid", "session_id")
    sessions_prefix: str = "/v1/sessions"
    health_prefix: str = ""
    max_body_size: int = 32 * 1024 * 1024
    connect_timeout: float = 10.0
    read_timeout: float | None = 600.0
    upstream_max_connections: int = 1000
    forward_store: bool = False
    replay_reasoning: ReplayReasoning = "auto"
    profile: Profile = "openai"
    routes: tuple[Route, ...] = ()
    session_namespaces: tuple[tuple[str, ...], ...] = ()
    simple_chat_prefix: str | None = None
    max_history_messages: int = 0
    max_history_tokens: int = 0
    max_session_messages: int = 10_000
    max_splice_bytes: int = 32 * 1024 * 1024
    max_sessions_per_owner: int = 1000
    memory_max_sessions: int = 100_000
    scope_secret: str | None = None
    require_credential: bool = False
    upstream_api_key: str | None = None
    upstream_api_key_env: str | None = None
    on_busy: OnBusy = "wait"
    busy_timeout: float = 60.0
    lease_ttl: float = 30.0
    max_turn_duration: float = 1800.0
    send_timeout: float = 60.0
    on_store_error: OnStoreError = "fail"
    store_timeout: float = 5.0
    idempotency_ttl: float = 86400.0
    max_headers: int = 100
    client_header_timeout: float = 30.0
    client_body_timeout: float = 60.0
    max_header_bytes: int = 64 * 1024
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    access_log: bool = False
    shutdown_timeout: float = 30.0
    metrics_port: int | None = None
    ui: bool = True
    ui_prefix: str = "/ui"
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key, parse in _PARSERS.items():
            object.__setattr__(self, key, _parse(key, parse, getattr(self, key), "Settings()"))

    @property
    def route_table(self) -> tuple[Route, ...]:
        """``routes``, then ``upstream`` as the catch-all route under the prefix ""."""
        if self.upstream is None or any(route.prefix == "" for route in self.routes):
            return self.routes
        return (*self.routes, Route("", self.upstream, self.profile))

    @property
    def idempotency_ttl_ms(self) -> int:
        return max(round(self.idempotency_ttl * 1000), 1)

    def __repr__(self) -> str:  # without the secret and store passwords, so it can be logged
        fields = (
            f"{field.name}={_redacted(field.name, getattr(self, field.name))}" for field in dataclasses.fields(self)
        )
        return f"Settings({', '.join(fields)})"


def load_settings(cli: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """Build the settings from the command line, the environment and the config file.

    `cli` maps setting names to values (``None`` = not given), plus ``config``: the
    config file's path, which otherwise comes from ``STATEFULPROXY_CONFIG``.
    Only ``STATEFULPROXY_<KEY>`` variables of known keys are read from `environ`.
    """
    raw: dict[str, tuple[Any, str]] = {}  # key -> (value, where it came from)
    path = cli.get("config")
    if path is None:
        path = environ.get(CONFIG_ENV)
    if path is not None:
        source = f"config file {path}"
        file_values = _read_config_file(str(path), source)
        _reject_unknown_keys(file_values, source)
        raw.update((key, (value, source)) for key, value in file_values.items())
    for key in _PARSERS:
        name = ENV_PREFIX + key.upper()
        if name in environ:
            raw[key] = (environ[name], name)
    flags = {key: value for key, value in cli.items() if key != "config" and value is not None}
    _reject_unknown_keys(flags, "command line")
    raw.update((key, (value, "--" + key.replace("_", "-"))) for key, value in flags.items())
    return Settings(**{key: _parse(key, _PARSERS[key], value, origin) for key, (value, origin) in raw.items()})


def settings_from_mapping(values: Mapping[str, Any], *, source: str) -> Settings:
    """Validate already-merged raw values (strings as in the environment, or native values).

    Keys not given take their defaults; an unknown key is a ConfigError naming `source`.
    """
    _reject_unknown_keys(values, source)
    return Settings(**{key: _parse(key, _PARSERS[key], value, source) for key, value in values.items()})


def resolve_upstream_api_key(settings: Settings, environ: Mapping[str, str]) -> str | None:
    """The key the proxy authenticates upstream with for client-secret requests, if any."""
    if settings.upstream_api_key:
        return settings.upstream_api_key
    if settings.upstream_api_key_env:
        return environ.get(settings.upstream_api_key_env) or None
    return None


def _read_config_file(path: str, source: str) -> Mapping[Any, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: invalid YAML{where}: {_one_line(str(exc.problem))}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {_one_line(str(exc))}") from None
    if data is None:  # an empty file, or only comments
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values (got a {type(data).__name__})")
    return data


def _reject_unknown_keys(values: Mapping[Any, Any], source: str) -> None:
    for key in values:
        if key not in _PARSERS:
            close = difflib.get_close_matches(str(key), _PARSERS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")


def _parse(key: str, parse: Callable[[Any], Any], value: Any, origin: str) -> Any:
    try:
        return parse(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc} (got {_shown(key, value)} from {origin})") from None


def _shown(key: str, value: Any) -> str:
    text = _redacted(key, value)
    return text if len(text) <= 100 else text[:97] + "..."


def _redacted(key: str, value: Any) -> str:
    if key in ("scope_secret", "upstream_api_key") and value:
        return "<hidden>"
    text = repr(value)
    if key in ("upstream", "store"):
        text = re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", text)  # user:password@host
        text = re.sub(r"([?&]password=)[^&#']*", r"\1***", text)  # redis-py also takes ?password=
    return text


def _structured(value: Any) -> Any:
    """A list or mapping setting given as text (an environment variable) is read as YAML, JSON included."""
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise ValueError("is not valid YAML or JSON") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


_PARSERS: Final[Mapping[str, Callable[[Any], Any]]] = MappingProxyType(
    {
        "upstream": values.upstream,
        "store": values.store,
        "store_prefix": values.key_prefix,
        "workers": values.integer(1, 64),
        "host": values.host,
        "port": values.integer(1, 65535),
        "session_ttl": values.duration(allow_none=True),
        "session_headers": values.session_headers,
        "sessions_prefix": values.prefix(allow_empty=False),
        "health_prefix": values.prefix(allow_empty=True),
        "max_body_size": values.size,
        "connect_timeout": values.duration(allow_none=False),
        "read_timeout": values.duration(allow_none=True),
        "upstream_max_connections": values.integer(0, None),
        "forward_store": values.boolean,
        "replay_reasoning": values.choice(get_args(ReplayReasoning)),
        "profile": values.choice(PROFILES),
        "routes": lambda value: parse_routes(_structured(value), values.upstream),
        "session_namespaces": parse_namespaces,
        "simple_chat_prefix": values.optional(values.prefix(allow_empty=False)),
        "max_history_messages": values.integer(0, None),
        "max_history_tokens": values.integer(0, None),
        "max_session_messages": values.integer(0, None),
        "max_splice_bytes": values.size,
        "max_sessions_per_owner": values.integer(0, None),
        "memory_max_sessions": values.integer(0, None),
        "scope_secret": values.secret,
        "require_credential": values.boolean,
        "upstream_api_key": values.secret,
        "upstream_api_key_env": values.secret,
        "on_busy": values.choice(get_args(OnBusy)),
        "busy_timeout": values.duration(allow_none=False),
        "lease_ttl": values.duration(allow_none=False),
        "max_turn_duration": values.duration(allow_none=False),
        "send_timeout": values.duration(allow_none=False),
        "on_store_error": values.choice(get_args(OnStoreError)),
        "store_timeout": values.duration(allow_none=False),
        "idempotency_ttl": values.duration(allow_none=False),
        "max_headers": values.integer(1, 10_000),
        "client_header_timeout": values.duration(allow_none=False),
        "client_body_timeout": values.duration(allow_none=False),
        "max_header_bytes": values.size,
        "log_level": values.choice(get_args(LogLevel)),
        "log_format": values.choice(get_args(LogFormat)),
        "access_log": values.boolean,
        "shutdown_timeout": values.duration(allow_none=False),
        "metrics_port": values.optional(values.integer(1, 65535)),
        "ui": values.boolean,
        "ui_prefix": values.prefix(allow_empty=False),
        "cors_origins": values.origins,
    }
)
