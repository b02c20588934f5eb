"""CORS for browser clients (issue 13): the proxy answers preflights to its own paths, and only for listed origins."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from harness import upstream as reply
from harness.stack import Since, Stack, running_stack

PAGE = "https://app.example.com"
PREFLIGHT = {
    "origin": PAGE,
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type, session-id",
}
# the paths the proxy serves itself, each as a browser would call it
OWN_PATHS = [
    "/v1/chat/completions",
    "/v1/messages",
    "/api/chat",
    "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
    "/v1/sessions",
    "/v1/sessions/sess_abc/messages",
    "/document/d1/sessions",
    "/document/d1/v1/chat/completions",
    "/api/v1/chat/completions",
    "/ui/widget.js",
]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    settings = {
        "cors_origins": [PAGE, "http://127.0.0.1:8000"],
        "session_namespaces": ["/document/{doc}"],
        "simple_chat_prefix": "/api/v1/chat",
    }
    with running_stack("memory://", **settings) as running:
        yield running


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx2.Client]:
    with stack.http(None) as client:
        yield client


@pytest.mark.parametrize("path", OWN_PATHS)
def test_a_preflight_to_the_proxys_paths_is_answered_and_never_forwarded(
    stack: Stack, http: httpx2.Client, path: str
) -> None:
    since = Since(stack)
    response = http.options(path, headers=PREFLIGHT)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == PAGE
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"] == "authorization, content-type, session-id"
    assert int(response.headers["access-control-max-age"]) > 0
    assert "Origin" in response.headers["vary"]
    assert since.received == []


def test_a_preflight_from_an_origin_not_listed_is_refused_and_not_forwarded(stack: Stack, http: httpx2.Client) -> None:
    since = Since(stack)
    for origin in ("https://evil.example", "https://app.example.com.evil.example", "null", "HTTPS://APP.EXAMPLE.COM"):
        response = http.options("/v1/chat/completions", headers={**PREFLIGHT, "origin": origin})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "cors_origin_not_allowed"
        assert not any(name.startswith("access-control-") for name in response.headers)
    assert since.received == []


def test_a_preflight_elsewhere_is_the_upstreams(stack: Stack, http: httpx2.Client) -> None:
    since = Since(stack)
    http.options("/v1/models", headers=PREFLIGHT)
    assert [(request.method, request.path) for request in since.received] == [("OPTIONS", "/v1/models")]


def test_an_options_request_that_is_no_preflight_is_served_as_before(http: httpx2.Client) -> None:
    response = http.options("/v1/sessions", headers={"origin": PAGE})  # no Access-Control-Request-Method
    assert response.status_code == 405


def test_answers_to_a_listed_origin_name_it(stack: Stack) -> None:
    with stack.http("cors-key") as http:
        created = http.post("/v1/sessions", headers={"origin": PAGE})
        assert created.headers["access-control-allow-origin"] == PAGE
        assert created.headers["access-control-allow-credentials"] == "true"
        chat = http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"origin": PAGE, "session-id": created.json()["id"]},
        )
        assert chat.status_code == 200
        assert chat.headers["access-control-allow-origin"] == PAGE
        assert "x-session-id" in chat.headers["access-control-expose-headers"]
        listed = http.get("/v1/sessions", headers={"origin": "https://evil.example"})
        assert listed.status_code == 200
        assert "access-control-allow-origin" not in listed.headers
        assert "Origin" in listed.headers["vary"]


def test_an_upstreams_own_cors_headers_never_reach_a_page_through_a_chat_path(stack: Stack) -> None:
    def upstream_allowing_everyone() -> reply.Raw:
        body = b'{"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}'
        headers = [("content-type", "application/json"), ("access-control-allow-origin", "*")]
        return reply.raw(200, headers, [body])

    with stack.http("cors-key") as http:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        stack.upstream.push(upstream_allowing_everyone())
        allowed = http.post("/v1/chat/completions", json=body, headers={"origin": PAGE})
        assert allowed.headers.get_list("access-control-allow-origin") == [PAGE]
        stack.upstream.push(upstream_allowing_everyone())
        refused = http.post("/v1/chat/completions", json=body, headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in refused.headers
        stack.upstream.push(upstream_allowing_everyone(), path="/v1/models")
        elsewhere = http.get("/v1/models", headers={"origin": "https://evil.example"})
        assert elsewhere.headers["access-control-allow-origin"] == "*"  # not the proxy's path: untouched


def test_any_origin_is_allowed_without_credentials() -> None:
    with running_stack("memory://", cors_origins="*") as stack, stack.http(None) as http:
        response = http.options("/v1/sessions", headers={**PREFLIGHT, "origin": "https://anyone.example"})
        assert response.status_code == 204
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers
        answer = http.get("/ui/widget.js", headers={"origin": "https://anyone.example"})
        assert answer.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in answer.headers


def test_without_cors_origins_a_preflight_to_the_proxys_paths_is_refused_and_answers_are_unchanged() -> None:
    with running_stack("memory://") as stack, stack.http(None) as http:
        since = Since(stack)
        response = http.options("/v1/chat/completions", headers=PREFLIGHT)
        assert response.status_code == 403
        assert "access-control-allow-origin" not in response.headers
        assert since.received == []
        listed = http.get("/v1/sessions", headers={"origin": PAGE})
        assert "access-control-allow-origin" not in listed.headers
        assert "vary" not in listed.headers
