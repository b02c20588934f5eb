"""Parsers of setting values: a raw value (native, or a string from the environment) in,
the normalised value out. Each raises ValueError saying what is wrong, and accepts its own
output unchanged."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

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


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


# --upstream mock://: the built-in scripted upstream (mock_upstream.py), served by the proxy itself
MOCK_UPSTREAM: Final = "mock://"


def upstream(value: Any) -> str | None:
    if value is None:
        return None
    text = string(value)
    if text.lower().startswith("mock:"):
        if text.lower() != MOCK_UPSTREAM:
            raise ValueError("must be mock:// with nothing after it, or an http:// or https:// URL")
        return MOCK_UPSTREAM
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


_STORE_SCHEMES: Final = frozenset({"memory", "redis", "rediss", "unix", "redis+cluster", "redis+sentinel"})


def store(value: Any) -> str:
    text = string(value)
    try:
        scheme = urlsplit(text).scheme
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if scheme not in _STORE_SCHEMES or "://" not in text:
        raise ValueError("must be a memory://, redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// URL")
    return text


_KEY_PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def key_prefix(value: Any) -> str:
    text = string(value)
    if not _KEY_PREFIX.fullmatch(text):
        raise ValueError("must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    return text


def host(value: Any) -> str:
    text = string(value)
    if not text or any(char.isspace() for char in text):
        raise ValueError("must be a host name or IP address")
    return text


def integer(low: int, high: int | None) -> Callable[[Any], int]:
    expected = f"an integer from {low} to {high}" if high is not None else f"an integer of at least {low}"

    def parse(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            raise ValueError(f"must be {expected}")
        return value

    return parse


def duration(*, allow_none: bool) -> Callable[[Any], float | None]:
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


def size(value: Any) -> int:
    size = 0
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        size = int(Decimal(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()])
    if size <= 0:
        raise ValueError("must be a positive number of bytes, or a size such as '512KiB', '32MiB', '10MB'")
    return size


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("must be true or false")


def choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise ValueError("must be one of " + ", ".join(repr(choice) for choice in choices))

    return parse


def _items(value: Any, what: str) -> list[Any]:
    """A list setting's items, given as a list or as a comma-separated string."""
    if isinstance(value, str):
        return value.split(",")
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"must be a list of {what}, or a comma-separated string")


def session_headers(value: Any) -> tuple[str, ...]:
    names: list[str] = []
    for item in _items(value, "header names"):
        name = string(item).strip().lower()
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


def prefix(*, allow_empty: bool) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = string(value)
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


def optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``parse``, or None for null / 'none'."""

    def parse_optional(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        return parse(value)

    return parse_optional


def secret(value: Any) -> str | None:
    if value is None:
        return None
    text = string(value)
    if not text:
        raise ValueError("must not be empty")
    return text


# scheme://host[:port] as a browser sends it in Origin: no path, no trailing slash
_ORIGIN = re.compile(r"(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}))?")
_DEFAULT_PORTS: Final = MappingProxyType({"http": "80", "https": "443"})


def origins(value: Any) -> tuple[str, ...]:
    """``cors_origins``: ``*``, or origins such as ``https://app.example.com``, normalised as browsers send them."""
    found: list[str] = []
    for item in _items(value, "origins such as 'https://app.example.com'"):
        text = string(item).strip()
        if not text:
            continue
        if text != "*":
            match = _ORIGIN.fullmatch(text.lower())
            if match is None:
                raise ValueError(f"{text!r} is not an origin such as 'https://app.example.com' (no path)")
            scheme, host, port = match.groups()
            text = f"{scheme}://{host}" + (f":{port}" if port and port != _DEFAULT_PORTS[scheme] else "")
        if text not in found:
            found.append(text)
    return tuple(found)
