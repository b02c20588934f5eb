"""Where a request goes: routes to several upstreams, provider profiles, and session namespaces (pure).

A route sends the paths under its ``prefix`` to its ``upstream``, the prefix stripped
(``/anthropic/v1/messages`` -> ``https://api.anthropic.com/v1/messages``). It may also name
exact chat paths: a hosted session API that takes a chat body at its own path (``POST
/api/publicLLM`` with an OpenAI body) is served as a chat request of that dialect and
forwarded to the upstream path it maps to. ``--upstream`` is the one route with prefix "".

A profile says what a provider accepts: which reasoning field replays stored reasoning
(notes/providers.md, "Reasoning text round-trips differently per provider"), and whether
``store``/``metadata`` may be forwarded at all (strict providers reject them).

A session namespace is a path pattern such as ``/document/{doc}``: a request under
``/document/d1/...`` belongs to the namespace ``/document/d1``, which is stripped before
forwarding and remembered by the sessions it creates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

Profile = Literal["openai", "azure", "anthropic", "ollama", "vllm", "gemini", "deepseek", "groq", "generic-strict"]
ReplayReasoning = Literal["none", "reasoning_content", "reasoning"]
ChatDialect = Literal["openai", "anthropic", "ollama", "gemini"]

# ASGI scope keys: the route a request took, and the dialect of an exact chat path
ROUTE_KEY: Final = "statefulproxy.route"
CHAT_DIALECT_KEY: Final = "statefulproxy.chat_dialect"

PROFILES: Final = get_args(Profile)
# DeepSeek answers 400 to a tool-call continuation without its reasoning_content; vLLM (from
# v0.16) and Ollama's OpenAI endpoint read `reasoning`; everyone else gets none back.
PROFILE_REASONING: Final[Mapping[Profile, ReplayReasoning]] = {
    "deepseek": "reasoning_content",
    "vllm": "reasoning",
    "ollama": "reasoning",
}
# Providers that answer 400/422 to `store` or `metadata` (notes/providers.md): never forwarded to them.
STRICT_PROFILES: Final = frozenset({"anthropic", "gemini", "groq", "generic-strict"})

_PREFIX = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*")
_PATTERN_SEGMENT = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z0-9._~!$&'()*+,;=:@%-]+")


@dataclass(frozen=True, slots=True)
class ChatPath:
    """An exact path served as a chat request of ``dialect`` and forwarded to ``upstream_path``."""

    path: str
    dialect: ChatDialect
    upstream_path: str


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str  # "" for the catch-all (--upstream)
    upstream: str  # scheme://host[:port][/path], without a trailing slash
    profile: Profile = "openai"
    chat_paths: tuple[ChatPath, ...] = ()

    def chat_path(self, path: str) -> ChatPath | None:
        return next((chat for chat in self.chat_paths if chat.path == path), None)


def reasoning_field(profile: Profile) -> ReplayReasoning:
    return PROFILE_REASONING.get(profile, "none")


def match_route(routes: Sequence[Route], path: str) -> tuple[Route, str] | None:
    """The route with the longest prefix that ``path`` lies under, and the path with it stripped."""
    best: tuple[Route, str] | None = None
    for route in routes:
        prefix = route.prefix
        under = path == prefix or (path.startswith(prefix) and path[len(prefix)] == "/")
        if under and (best is None or len(prefix) > len(best[0].prefix)):
            best = (route, path[len(prefix) :] or "/")
    return best


def match_namespace(patterns: Sequence[tuple[str, ...]], path: str) -> tuple[str, str] | None:
    """(namespace, the rest of the path) for the first pattern ``path`` lies under, with something after it."""
    segments = path.split("/")[1:]
    for pattern in patterns:
        if len(segments) <= len(pattern):
            continue
        if all(part.startswith("{") or part == segment for part, segment in zip(pattern, segments, strict=False)):
            count = len(pattern)
            if not all(segments[:count]):
                continue
            return "/" + "/".join(segments[:count]), "/" + "/".join(segments[count:])
    return None


def parse_namespaces(value: Any) -> tuple[tuple[str, ...], ...]:
    """``session_namespaces``: patterns such as ``/document/{doc}``, as their segments."""
    if isinstance(value, str):
        value = [item for item in value.split(",") if item.strip()]
    if not isinstance(value, list | tuple):
        raise ValueError("must be a list of path patterns such as '/document/{doc}'")
    patterns: list[tuple[str, ...]] = []
    for item in value:
        if isinstance(item, tuple):  # already parsed
            patterns.append(item)
            continue
        text = item.strip() if isinstance(item, str) else item
        if not isinstance(text, str) or not text.startswith("/") or text.endswith("/"):
            raise ValueError(f"{item!r} is not a path pattern such as '/document/{{doc}}'")
        segments = tuple(text.split("/")[1:])
        if not all(_PATTERN_SEGMENT.fullmatch(segment) for segment in segments):
            raise ValueError(f"{item!r} is not a path pattern such as '/document/{{doc}}'")
        if not any(segment.startswith("{") for segment in segments):
            raise ValueError(f"{item!r} names no {{parameter}}: a namespace pattern needs one")
        patterns.append(segments)
    return tuple(patterns)


def parse_routes(value: Any, upstream: Any) -> tuple[Route, ...]:
    """``routes``: a list of ``{prefix, upstream, profile?, chat_paths?}``. ``upstream`` parses a URL."""
    if isinstance(value, tuple) and all(isinstance(item, Route) for item in value):
        return value
    if not isinstance(value, list | tuple):
        raise ValueError("must be a list of {prefix, upstream, profile, chat_paths} mappings")
    routes: list[Route] = []
    for index, item in enumerate(value):
        if isinstance(item, Route):
            routes.append(item)
            continue
        where = f"routes[{index}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} must be a mapping with prefix and upstream")
        unknown = set(item) - {"prefix", "upstream", "profile", "chat_paths"}
        if unknown:
            raise ValueError(f"{where} has an unknown key {sorted(unknown)[0]!r}")
        prefix = item.get("prefix", "")
        if not isinstance(prefix, str) or prefix.endswith("/") or not _PREFIX.fullmatch(prefix):
            raise ValueError(f"{where}.prefix must be '' or a path such as '/anthropic' (no trailing '/')")
        if any(route.prefix == prefix for route in routes):
            raise ValueError(f"{where}.prefix {prefix!r} is used twice")
        try:
            url = upstream(item.get("upstream"))
        except ValueError as exc:
            raise ValueError(f"{where}.upstream {exc}") from None
        if url is None:
            raise ValueError(f"{where}.upstream is required")
        profile = item.get("profile", "openai")
        if profile not in PROFILES:
            raise ValueError(f"{where}.profile must be one of " + ", ".join(repr(name) for name in PROFILES))
        routes.append(Route(prefix, url, profile, _chat_paths(item.get("chat_paths", ()), where)))
    return tuple(routes)


def _chat_paths(value: Any, where: str) -> tuple[ChatPath, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where}.chat_paths must be a list of {{path, dialect, upstream_path}} mappings")
    found: list[ChatPath] = []
    for index, item in enumerate(value):
        at = f"{where}.chat_paths[{index}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{at} must be a mapping of path, dialect and upstream_path")
        path, target = _path(item.get("path"), f"{at}.path"), _path(item.get("upstream_path"), f"{at}.upstream_path")
        dialect = item.get("dialect", "openai")
        if dialect not in get_args(ChatDialect):
            raise ValueError(f"{at}.dialect must be one of " + ", ".join(repr(d) for d in get_args(ChatDialect)))
        found.append(ChatPath(path, dialect, target))
    return tuple(found)


def _path(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or not _PREFIX.fullmatch(value.rstrip("/")):
        raise ValueError(f"{where} must be a path such as '/api/publicLLM'")
    return value
