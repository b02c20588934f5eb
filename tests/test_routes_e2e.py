"""Several upstreams behind one proxy (issue 8, Routes): prefixes, profiles and exact chat paths, end to end."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2
import pytest

from harness import upstream as reply
from harness.servers import serve
from harness.upstream import ScriptedUpstream
from statefulproxy import ProxyApp, settings_from_mapping


@dataclass
class Upstreams:
    default: ScriptedUpstream
    anthropic: ScriptedUpstream
    deepseek: ScriptedUpstream
    url: str


@contextlib.contextmanager
def routed_proxy(**settings: Any) -> Iterator[Upstreams]:
    default, claude, deepseek = ScriptedUpstream(), ScriptedUpstream(), ScriptedUpstream()
    with (
        serve(default, loop="uvloop") as default_url,
        serve(claude, loop="uvloop") as claude_url,
        serve(deepseek, loop="uvloop") as deepseek_url,
    ):
        routes = [
            {"prefix": "/anthropic", "upstream": claude_url, "profile": "anthropic"},
            {"prefix": "/deepseek", "upstream": deepseek_url + "/api", "profile": "deepseek"},
            {
                "prefix": "/hosted",
                "upstream": default_url,
                "chat_paths": [
                    {"path": "/api/publicLLM", "dialect": "openai", "upstream_path": "/v1/chat/completions"}
                ],
            },
        ]
        values = {"upstream": default_url, "routes": routes, **settings}
        with serve(ProxyApp(settings_from_mapping(values, source="test")), loop="uvloop") as url:
            yield Upstreams(default, claude, deepseek, url)


@pytest.fixture(scope="module")
def proxy() -> Iterator[Upstreams]:
    with routed_proxy(forward_store=True) as upstreams:
        yield upstreams


def session() -> str:
    return f"route-{uuid.uuid4().hex[:12]}"


def test_a_prefix_routes_to_its_upstream_stripped_and_keeps_its_session(proxy: Upstreams) -> None:
    client = anthropic.Anthropic(base_url=proxy.url + "/anthropic", api_key="k", max_retries=0)
    headers = {"session-id": session()}
    before = len(proxy.anthropic.received)
    first = client.messages.create(
        model="claude", max_tokens=50, messages=[{"role": "user", "content": "hi"}], extra_headers=headers
    )
    client.messages.create(
        model="claude", max_tokens=50, messages=[{"role": "user", "content": "again"}], extra_headers=headers
    )
    received = proxy.anthropic.received[before:]
    assert [request.path for request in received] == ["/v1/messages", "/v1/messages"]
    assert first.content[0].type == "text"
    assert received[1].json["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": first.content[0].text}]},
        {"role": "user", "content": "again"},
    ]
    # a strict profile never gets `store`, even with forward_store
    client.messages.create(
        model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}], extra_body={"store": True}
    )
    assert "store" not in proxy.anthropic.received[-1].json


def test_other_paths_under_a_prefix_pass_through_stripped(proxy: Upstreams) -> None:
    with httpx2.Client(base_url=proxy.url, timeout=10) as http:
        response = http.post("/anthropic/v1/messages/count_tokens", json={"messages": []})
    assert response.status_code == 200
    assert proxy.anthropic.received[-1].path == "/v1/messages/count_tokens"


def test_an_upstream_path_prefix_is_kept(proxy: Upstreams) -> None:
    with httpx2.Client(base_url=proxy.url, timeout=10) as http:
        response = http.post(
            "/deepseek/v1/chat/completions", json={"model": "d", "messages": [{"role": "user", "content": "x"}]}
        )
    assert response.status_code == 200
    assert proxy.deepseek.received[-1].path == "/api/v1/chat/completions"


def test_the_profile_decides_how_reasoning_is_replayed(proxy: Upstreams) -> None:
    headers = {"session-id": session()}
    proxy.deepseek.push(reply.tool_calls([("call_1", "f", "{}")], reasoning="think first"))
    with httpx2.Client(base_url=proxy.url + "/deepseek", timeout=10, headers=headers) as http:
        http.post("/v1/chat/completions", json={"model": "d", "messages": [{"role": "user", "content": "go"}]})
        http.post(
            "/v1/chat/completions",
            json={"model": "d", "messages": [{"role": "tool", "tool_call_id": "call_1", "content": "done"}]},
        )
    replayed = proxy.deepseek.received[-1].json["messages"][1]
    assert replayed["role"] == "assistant"
    assert replayed["reasoning_content"] == "think first"  # DeepSeek answers 400 without it


def test_an_exact_chat_path_is_a_chat_request_forwarded_to_its_upstream_path(proxy: Upstreams) -> None:
    headers = {"session-id": session()}
    with httpx2.Client(base_url=proxy.url, timeout=10, headers=headers) as http:
        first = http.post("/hosted/api/publicLLM", json={"model": "m", "messages": [{"role": "user", "content": "a"}]})
        second = http.post("/hosted/api/publicLLM", json={"model": "m", "messages": [{"role": "user", "content": "b"}]})
    assert first.status_code == second.status_code == 200
    assert first.headers["x-session-id"] == headers["session-id"]
    last = proxy.default.received[-1]
    assert last.path == "/v1/chat/completions"
    answer = first.json()["choices"][0]["message"]["content"]
    assert last.json["messages"] == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "b"},
    ]


def test_the_catch_all_keeps_store_when_told_to_forward_it(proxy: Upstreams) -> None:
    with httpx2.Client(base_url=proxy.url, timeout=10) as http:
        http.post(
            "/v1/chat/completions", json={"model": "m", "store": True, "messages": [{"role": "user", "content": "x"}]}
        )
    assert proxy.default.received[-1].json["store"] is True


def test_without_a_catch_all_an_unrouted_path_is_a_404() -> None:
    claude = ScriptedUpstream()
    with serve(claude, loop="uvloop") as claude_url:
        settings = settings_from_mapping({"routes": [{"prefix": "/anthropic", "upstream": claude_url}]}, source="t")
        with serve(ProxyApp(settings), loop="uvloop") as url, httpx2.Client(base_url=url, timeout=10) as http:
            response = http.post("/v1/chat/completions", json={"model": "m", "messages": []})
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "no_route"
            assert http.get("/healthz").status_code == 200
    assert claude.received == []
