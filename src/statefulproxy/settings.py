"""Settings: one frozen object, built once at startup.

Every setting has one name: the YAML key, the keyword argument, and, upper-cased behind
``STATEFULPROXY_``, the environment variable. Precedence, per key: command line >
environment > config file > default. A bad value raises ConfigError with a one-line message
that starts with the key's name and says where the value came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, Literal, get_args
from urllib.parse import urlsplit

import yaml

from statefulproxy.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "LogLevel",
    "ReplayReasoning",
    "Settings",
    "load_settings",
    "resolve_upstream_api_key",
    "settings_from_mapping",
]

LogLevel = Literal["critical", "error", "warning", "info", "debug"]
ReplayReasoning = Literal["none", "reasoning_content", "reasoning"]

ENV_PREFIX: Final = "STATEFULPROXY_"
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
    replay_reasoning: ReplayReasoning = "none"
    scope_secret: str | None = None
    upstream_api_key: str | None = None
    upstream_api_key_env: str | None = None
    log_level: LogLevel = "info"
    access_log: bool = False

    def __post_init__(self) -> None:
        for key, parse in _PARSERS.items():
            object.__setattr__(self, key, _parse(key, parse, getattr(self, key), "Settings()"))

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


def _one_line(text: str) -> str:
    return " ".join(text.split())


# Parsers: raw value (native, or a string from the environment) -> normalised value.
# They raise ValueError saying what is wrong, and accept their own output unchanged.

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(_NUMBER + r"\s*(ms|s|m|h|d)?", re.IGNORECASE)
_DURATION_UNITS: Final = MappingProxyType({"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400})
_SIZE = re.compile(_NUMBER + r"\s*(b|kb|mb|gb|kib|mib|gib)?", re.IGNORECASE)
_SIZE_UNITS: Final = MappingProxyType(
    {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
)
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_NONE: Final = frozenset({"none", "null"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")  # RFC 9110 section 5.6.2, lower-cased
_PATH = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+")
# Session headers are removed before forwarding, so they must not be ones the request needs.
_RESERVED_HEADERS: Final = frozenset(
    {
        "authorization",
        "x-api-key",
        "api-key",
        "host",
        "connection",
        "content-length",
        "content-type",
        "transfer-encoding",
    }
)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _upstream(value: Any) -> str | None:
    if value is None:
        return None
    text = _string(value)
    if not text or any(char.isspace() for char in text):
        raise ValueError("must be an http:// or https:// URL without spaces")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials (clients send their own)")
    if "?" in text or "#" in text:
        raise ValueError("must not have a query string or fragment")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _store(value: Any) -> str:
    text = _string(value)
    try:
        scheme = urlsplit(text).scheme
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if scheme not in ("memory", "redis", "rediss") or "://" not in text:
        raise ValueError("must be a memory://, redis:// or rediss:// URL")
    return text


def _host(value: Any) -> str:
    text = _string(value)
    if not text or any(char.isspace() for char in text):
        raise ValueError("must be a host name or IP address")
    return text


def _integer(low: int, high: int | None) -> Callable[[Any], int]:
    expected = f"an integer from {low} to {high}" if high is not None else f"an integer of at least {low}"

    def parse(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            raise ValueError(f"must be {expected}")
        return value

    return parse


def _duration(*, allow_none: bool) -> Callable[[Any], float | None]:
    expected = "a positive number of seconds or a duration such as '30s', '15m', '24h', '7d'"
    if allow_none:
        expected += ", or 'none'"

    def parse(value: Any) -> float | None:
        if allow_none and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
            return None
        seconds = math.nan
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
            seconds = float(match[1]) * _DURATION_UNITS[(match[2] or "s").lower()]
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"must be {expected}")
        return seconds

    return parse


def _size(value: Any) -> int:
    size = 0
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        size = int(Decimal(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()])
    if size <= 0:
        raise ValueError("must be a positive number of bytes, or a size such as '512KiB', '32MiB', '10MB'")
    return size


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("must be true or false")


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise ValueError("must be one of " + ", ".join(repr(choice) for choice in choices))

    return parse


def _session_headers(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError("must be a list of header names, or a comma-separated string")
    names: list[str] = []
    for item in items:
        name = _string(item).strip().lower()
        if not name:
            continue
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid header name")
        if name in _RESERVED_HEADERS:
            raise ValueError(f"{name!r} is a header the upstream needs; session headers are removed before forwarding")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("must name at least one header")
    return tuple(names)


def _prefix(*, allow_empty: bool) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _string(value)
        if allow_empty and text == "":
            return text
        if not text.startswith("/"):
            raise ValueError("must start with '/'" + (" (or be empty)" if allow_empty else ""))
        if text.endswith("/"):
            raise ValueError("must not end with '/'")
        if not _PATH.fullmatch(text):
            raise ValueError("must be a URL path such as '/v1/sessions', without spaces, '//', '?' or '#'")
        return text

    return parse


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    text = _string(value)
    if not text:
        raise ValueError("must not be empty")
    return text


_PARSERS: Final[Mapping[str, Callable[[Any], Any]]] = MappingProxyType(
    {
        "upstream": _upstream,
        "store": _store,
        "host": _host,
        "port": _integer(1, 65535),
        "session_ttl": _duration(allow_none=True),
        "session_headers": _session_headers,
        "sessions_prefix": _prefix(allow_empty=False),
        "health_prefix": _prefix(allow_empty=True),
        "max_body_size": _size,
        "connect_timeout": _duration(allow_none=False),
        "read_timeout": _duration(allow_none=True),
        "upstream_max_connections": _integer(0, None),
        "forward_store": _boolean,
        "replay_reasoning": _choice(get_args(ReplayReasoning)),
        "scope_secret": _secret,
        "upstream_api_key": _secret,
        "upstream_api_key_env": _secret,
        "log_level": _choice(get_args(LogLevel)),
        "access_log": _boolean,
    }
)
