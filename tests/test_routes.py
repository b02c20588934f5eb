"""Routes, profiles and namespace patterns (routes.py): pure matching and parsing."""

from __future__ import annotations

from typing import Any

import pytest

from statefulproxy.routes import (
    ChatPath,
    Route,
    match_namespace,
    match_route,
    parse_namespaces,
    parse_routes,
    reasoning_field,
)
from statefulproxy.settings_values import upstream

ROUTES = (
    Route("", "http://default"),
    Route("/anthropic", "https://api.anthropic.com", "anthropic"),
    Route("/anthropic/eu", "https://eu.example", "anthropic"),
)


@pytest.mark.parametrize(
    ("path", "prefix", "rest"),
    [
        ("/v1/chat/completions", "", "/v1/chat/completions"),
        ("/anthropic/v1/messages", "/anthropic", "/v1/messages"),
        ("/anthropic", "/anthropic", "/"),
        ("/anthropic/eu/v1/messages", "/anthropic/eu", "/v1/messages"),
        ("/anthropicx/v1/messages", "", "/anthropicx/v1/messages"),  # a prefix ends at a segment boundary
    ],
)
def test_the_longest_prefix_wins_and_is_stripped(path: str, prefix: str, rest: str) -> None:
    found = match_route(ROUTES, path)
    assert found is not None
    assert (found[0].prefix, found[1]) == (prefix, rest)


def test_no_catch_all_means_no_route() -> None:
    assert match_route(ROUTES[1:], "/v1/chat/completions") is None


def test_exact_chat_paths() -> None:
    route = Route("", "http://x", chat_paths=(ChatPath("/api/publicLLM", "openai", "/v1/chat/completions"),))
    assert route.chat_path("/api/publicLLM") == ChatPath("/api/publicLLM", "openai", "/v1/chat/completions")
    assert route.chat_path("/api/publicLLM/x") is None


@pytest.mark.parametrize(
    ("profile", "field"),
    [("deepseek", "reasoning_content"), ("vllm", "reasoning"), ("ollama", "reasoning"), ("openai", "none")],
)
def test_profiles_decide_the_reasoning_field(profile: Any, field: str) -> None:
    assert reasoning_field(profile) == field


PATTERNS = parse_namespaces(["/document/{doc}", "/team/{team}/chat/{chat}"])


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/document/d1/chat/completions", ("/document/d1", "/chat/completions")),
        ("/document/d1/sessions", ("/document/d1", "/sessions")),
        ("/team/a/chat/b/v1/messages", ("/team/a/chat/b", "/v1/messages")),
        ("/document/d1", None),  # nothing under it
        ("/document", None),
        ("/documents/d1/chat/completions", None),
        ("/team/a/talk/b/v1/messages", None),
        ("/v1/chat/completions", None),
    ],
)
def test_namespaces(path: str, expected: tuple[str, str] | None) -> None:
    assert match_namespace(PATTERNS, path) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("document/{doc}", "not a path pattern"),
        ("/document/{doc}/", "not a path pattern"),
        ("/document/d1", "names no {parameter}"),
        ("/doc ument/{doc}", "not a path pattern"),
        (5, "must be a list"),
    ],
)
def test_bad_namespace_patterns(value: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("{", r"\{").replace("}", r"\}")):
        parse_namespaces(value if isinstance(value, int) else [value])


def test_routes_parse() -> None:
    routes = parse_routes(
        [
            {"prefix": "/a", "upstream": "https://api.anthropic.com/", "profile": "anthropic"},
            {
                "upstream": "http://localhost:11434",
                "chat_paths": [{"path": "/api/x", "upstream_path": "/api/chat", "dialect": "ollama"}],
            },
        ],
        upstream,
    )
    assert routes == (
        Route("/a", "https://api.anthropic.com", "anthropic"),
        Route("", "http://localhost:11434", "openai", (ChatPath("/api/x", "ollama", "/api/chat"),)),
    )
    assert parse_routes(routes, upstream) is routes  # its own output parses to itself


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"prefix": "/a"}, "must be a list"),
        ([{"prefix": "/a"}], r"routes\[0\].upstream is required"),
        ([{"prefix": "a", "upstream": "http://x"}], r"routes\[0\].prefix must be"),
        ([{"prefix": "/a", "upstream": "ftp://x"}], r"routes\[0\].upstream must be an http"),
        ([{"prefix": "/a", "upstream": "http://x", "profile": "mistral"}], r"routes\[0\].profile must be one of"),
        ([{"prefix": "/a", "upstream": "http://x", "extra": 1}], "unknown key 'extra'"),
        ([{"prefix": "/a", "upstream": "http://x"}, {"prefix": "/a", "upstream": "http://y"}], "used twice"),
        ([{"upstream": "http://x", "chat_paths": [{"path": "x", "upstream_path": "/y"}]}], r"chat_paths\[0\].path"),
        (
            [{"upstream": "http://x", "chat_paths": [{"path": "/x", "upstream_path": "/y", "dialect": "cohere"}]}],
            "dialect",
        ),
    ],
)
def test_bad_routes(value: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_routes(value, upstream)
