"""Credentials and message contents never reach the logs (issue 4, Isolation).

A real ``python -m statefulproxy`` process, so its own logging configuration is the one under test,
at the default log level, runs a full mix of traffic: sessions made every way, streamed and not, tool
calls, upstream errors and cut streams, the management API, client secrets, malformed and hostile
requests, a client that disconnects, then the upstream and the Redis store going away. Every
credential carries one tag and every piece of message content another; neither may appear anywhere
in what the process wrote.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from typing import Any

import httpx2
import pytest

from harness import upstream as reply
from harness.proxy_process import clean_environ, proxy_process
from harness.redis_server import running_redis
from harness.servers import serve
from harness.upstream import ScriptedUpstream

RUN = uuid.uuid4().hex[:12]
SECRET = f"SECRET{RUN}"  # in every credential
CONTENT = f"CONTENT{RUN}"  # in every piece of message content

BEARER = f"sk-test-{SECRET}-bearer"
X_API_KEY = f"{SECRET}-x-api-key"
AZURE_KEY = f"{SECRET}-api-key"
QUERY_KEY = f"{SECRET}-query"
UPSTREAM_KEY = f"sk-{SECRET}-upstream"
REDIS_PASSWORD = f"{SECRET}-redis"

CHAT = "/v1/chat/completions"
SESSIONS = "/v1/sessions"


def proxy_env(extra: dict[str, str] | None) -> dict[str, str]:
    return clean_environ(
        STATEFULPROXY_UPSTREAM_API_KEY=UPSTREAM_KEY,  # client secrets need the proxy's own upstream key
        STATEFULPROXY_MAX_BODY_SIZE="64KiB",
        **(extra or {}),
    )


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def raw_request(url: str, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection; the response head (or b"" if the server just closes)."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in received and (chunk := sock.recv(65536)):
                received += chunk
    return received


class Traffic:
    """Every kind of request the proxy sees, each asserting it took the path it was meant to."""

    def __init__(self, url: str, http: httpx2.Client, upstream: ScriptedUpstream) -> None:
        self.url = url
        self.http = http
        self.upstream = upstream
        self.minted: dict[str, str] = {}  # secrets the proxy made: not to be logged either
        self.session_id = ""  # made by store=true, Bearer scope
        self.managed = ""  # made by the management API, with a client secret

    def chat(self, headers: dict[str, str], body: dict[str, Any], **options: Any) -> httpx2.Response:
        return self.http.post(options.pop("path", CHAT), headers=headers, json=body, **options)

    def chat_status(self, headers: dict[str, str], body: dict[str, Any], **options: Any) -> int:
        return self.chat(headers, body, **options).status_code

    def stream_status(self, headers: dict[str, str], body: dict[str, Any]) -> int:
        with self.http.stream("POST", CHAT, headers=headers, json={**body, "stream": True}) as response:
            response.read()
            return response.status_code

    def status(self, method: str, path: str, headers: dict[str, str], **options: Any) -> int:
        return self.http.request(method, path, headers=headers, **options).status_code

    def sessions(self) -> None:
        """Sessions by store=true, body metadata, body session_id/sessionId and each header; streamed and not."""
        self.upstream.push(reply.text(f"{CONTENT} assistant one"))
        created = self.chat(bearer(BEARER), {"model": "m", "store": True, "messages": [user(f"{CONTENT} one")]})
        assert created.status_code == 200, created.text
        self.session_id = created.json()["metadata"]["session_id"]
        self.upstream.push(reply.text(f"{CONTENT} assistant two"))
        body = {"model": "m", "metadata": {"session_id": self.session_id}, "messages": [user(CONTENT)]}
        assert self.stream_status(bearer(BEARER), body) == 200
        arguments = json.dumps({"query": f"{CONTENT} tool argument"})
        self.upstream.push(reply.tool_calls([("call_1", "lookup", arguments)]))
        x_key = {"x-api-key": X_API_KEY}
        assert self.stream_status({**x_key, "session-id": "logs-tools"}, {"messages": [user(CONTENT)]}) == 200
        tool_result = {"role": "tool", "tool_call_id": "call_1", "content": f"{CONTENT} tool result"}
        assert self.chat_status({**x_key, "x-session-id": "logs-tools"}, {"messages": [tool_result]}) == 200
        azure = self.chat(
            {"api-key": AZURE_KEY, "sessionId": "logs-azure"},
            {"session_id": "logs-azure", "messages": [user(CONTENT)]},
            path="/openai/deployments/gpt/chat/completions",
            params={"api-version": "2024-10-21", "api-key": QUERY_KEY},
        )
        assert azure.status_code == 200, azure.text
        assert (
            self.chat_status({"session_id": "logs-anon"}, {"sessionId": "logs-anon", "messages": [user(CONTENT)]})
            == 200
        )
        keyed = {**bearer(BEARER), "session-id": "logs-keyed", "idempotency-key": f"{SECRET}-idempotency"}
        assert [self.chat_status(keyed, {"messages": [user(CONTENT)]}) for _ in range(2)] == [200, 200]
        assert self.chat_status(keyed, {"messages": [user(f"{CONTENT} other")]}) == 422

    def upstream_failures(self) -> None:
        """An error status, a cut stream, a stream without [DONE], an in-band error, a client that leaves."""
        headers = {**bearer(BEARER), "session-id": "logs-fail"}
        body = {"messages": [user(CONTENT)]}
        self.upstream.push(reply.error(500, {"error": {"message": f"{CONTENT} upstream echo", "type": "server"}}))
        assert self.chat_status(headers, body) == 500
        self.upstream.push(reply.cut(2, reply=reply.text(f"{CONTENT} cut short " * 4)))
        with pytest.raises(httpx2.HTTPError):
            self.stream_status(headers, body)
        self.upstream.push(reply.no_done(reply.text(f"{CONTENT} no done")))
        assert self.stream_status(headers, body) == 200
        self.upstream.push(reply.inband_error(error={"message": f"{CONTENT} in band", "type": "server_error"}))
        assert self.stream_status(headers, body) == 200
        release = threading.Event()
        self.upstream.push(reply.hold(release, reply=reply.text(f"{CONTENT} held reply " * 3)))
        with self.http.stream("POST", CHAT, headers=headers, json={**body, "stream": True}) as response:
            assert response.status_code == 200
            next(response.iter_raw())
        assert self.upstream.disconnected.wait(5), "the upstream never saw the client leave"
        release.set()

    def stateless(self) -> None:
        query = {"api-key": QUERY_KEY}
        assert self.chat_status(bearer(BEARER), {"model": "m", "messages": [user(CONTENT)]}, params=query) == 200
        assert self.status("GET", "/v1/models", {"x-api-key": X_API_KEY}, params=query) == 200

    def management(self) -> None:
        """Every endpoint, with titles and metadata carrying content."""
        key = bearer(BEARER)
        made = self.http.post(
            SESSIONS,
            headers=key,
            json={"title": f"{CONTENT} title", "metadata": {"note": f"{CONTENT} note"}, "client_secret": {}},
        )
        assert made.status_code == 201, made.text
        self.minted["client secret"] = made.json()["client_secret"]["value"]
        self.managed = managed = made.json()["id"]
        assert self.status("GET", SESSIONS, key, params={"limit": 5}) == 200
        assert self.status("GET", f"{SESSIONS}/{self.session_id}", key) == 200
        messages = self.http.get(f"{SESSIONS}/{self.session_id}/messages", headers=key).json()["data"]
        assert len(messages) == 4
        assert self.status("POST", f"{SESSIONS}/{managed}", key, json={"title": f"{CONTENT} renamed"}) == 200
        fork = self.http.post(
            f"{SESSIONS}/{self.session_id}/fork", headers=key, json={"up_to_message_id": messages[1]["id"]}
        )
        assert fork.status_code == 201, fork.text
        forked = f"{SESSIONS}/{fork.json()['id']}"
        assert self.status("DELETE", f"{forked}/messages", key) == 200
        assert self.status("POST", f"{forked}/end", key) == 200
        assert self.chat_status({**key, "session-id": fork.json()["id"]}, {"messages": [user(CONTENT)]}) == 409
        assert self.status("POST", f"{SESSIONS}/logs-tools/cancel", {"x-api-key": X_API_KEY}) == 200
        assert self.status("DELETE", forked, key) == 200
        assert self.status("GET", f"{SESSIONS}/{self.session_id}", {"x-api-key": X_API_KEY}) == 404
        assert self.status("GET", SESSIONS, key, params={"after": "no-such-session"}) == 400

    def client_secrets(self) -> None:
        secret = bearer(self.minted["client secret"])
        managed = f"{SESSIONS}/{self.managed}"
        assert self.chat_status(secret, {"messages": [user(f"{CONTENT} from a browser")]}) == 200
        assert self.upstream.chat_requests[-1].header("authorization") == f"Bearer {UPSTREAM_KEY}"
        assert self.status("GET", f"{managed}/messages", secret) == 200
        assert self.status("GET", SESSIONS, secret) == 403
        assert self.status("DELETE", managed, secret) == 403
        assert self.chat_status({**secret, "session-id": self.session_id}, {"messages": [user(CONTENT)]}) == 403
        assert self.status("GET", "/v1/models", secret) == 403
        assert self.status("GET", managed, bearer(f"spcs_{SECRET}-unknown")) == 401

    def malformed(self) -> None:
        """Bad JSON, bad shapes, bad ids, caps on body, nesting and headers, ambiguous framing, not HTTP."""
        headers = {**bearer(BEARER), "session-id": "logs-bad", "content-type": "application/json"}
        assert self.status("POST", CHAT, headers, content=f'{{"messages": ["{CONTENT}"'.encode()) == 400
        assert self.status("POST", CHAT, headers, content=json.dumps([CONTENT]).encode()) == 400
        assert self.chat_status(headers, {"messages": CONTENT}) == 400
        assert self.chat_status(headers, {"messages": [CONTENT]}) == 400
        assert self.chat_status(headers, {"messages": [{"content": CONTENT}]}) == 400
        assert self.chat_status(headers, {"session_id": "other", "messages": [user(CONTENT)]}) == 400
        bad_id = {**bearer(BEARER), "session-id": f"bad id {CONTENT}"}
        assert self.chat_status(bad_id, {"messages": [user(CONTENT)]}) == 400
        assert self.chat_status(headers, {"messages": [user(CONTENT * 4000)]}) == 413
        deep: Any = CONTENT
        for _ in range(300):
            deep = [deep]
        assert 400 <= self.chat_status(headers, {"messages": [user(CONTENT)], "extra": deep}) < 500
        many = {**headers, **{f"x-junk-{i}": f"{CONTENT}-{SECRET}" for i in range(150)}}
        assert 400 <= self.chat_status(many, {"messages": [user(CONTENT)]}) < 500
        assert self.status("POST", SESSIONS, bearer(BEARER), content=f"{{{CONTENT}".encode()) == 400
        assert self.status("POST", SESSIONS, bearer(BEARER), json={"title": 7, "metadata": {CONTENT: 1}}) == 400
        content = json.dumps({"messages": [user(CONTENT)]}).encode()
        smuggled = (
            (
                f"POST {CHAT}?api-key={QUERY_KEY} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {BEARER}\r\n"
                f"Content-Length: {len(content)}\r\nTransfer-Encoding: chunked\r\nsession-id: logs-raw\r\n\r\n"
                f"{len(content):x}\r\n"
            ).encode()
            + content
            + b"\r\n0\r\n\r\n"
        )
        assert raw_request(self.url, smuggled).startswith(b"HTTP/1.1 400")
        raw_request(self.url, f"{CONTENT} /{SECRET} HTTP/9\r\n\r\n".encode())  # not HTTP at all

    def upstream_down(self) -> None:
        key = bearer(BEARER)
        assert self.chat_status({**key, "session-id": self.session_id}, {"messages": [user(CONTENT)]}) == 502
        assert (
            self.chat_status({"x-api-key": X_API_KEY, "session-id": "logs-new"}, {"messages": [user(CONTENT)]}) == 502
        )
        assert self.status("GET", "/v1/models", key, params={"api-key": QUERY_KEY}) == 502

    def store_down(self) -> None:
        key = bearer(BEARER)
        assert self.status("GET", "/readyz", {}) == 503
        assert self.chat_status({**key, "session-id": self.session_id}, {"messages": [user(CONTENT)]}) == 503
        assert self.status("GET", SESSIONS, key) == 503
        assert self.status("POST", SESSIONS, key, json={"title": CONTENT}) == 503


def leaks(output: str, minted: dict[str, str]) -> list[str]:
    needles = {"a credential": SECRET, "message content": CONTENT, **minted}
    for name, value in minted.items():
        needles[f"{name} (its random part)"] = value.removeprefix("spcs_")
    return [f"{name} ({needle!r})" for name, needle in needles.items() if needle in output]


def full_run(*extra: str, env: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """Run the traffic against a fresh proxy; everything the proxy wrote, and the secrets it minted."""
    upstream = ScriptedUpstream()
    with contextlib.ExitStack() as upstream_running, contextlib.ExitStack() as store_running:
        upstream_url = upstream_running.enter_context(serve(upstream))
        # a Redis user with a password the proxy logs in with (the default user stays open for the harness)
        acl_user = ["--user", "proxy", "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all"]
        redis_url = store_running.enter_context(running_redis(acl_user))
        store_url = redis_url.replace("redis://", f"redis://proxy:{REDIS_PASSWORD}@")
        with (
            proxy_process(["--upstream", upstream_url, "--store", store_url, *extra], proxy_env(env)) as (url, proxy),
            httpx2.Client(base_url=url, timeout=10) as http,
        ):
            traffic = Traffic(url, http, upstream)
            traffic.sessions()
            traffic.upstream_failures()
            traffic.stateless()
            traffic.management()
            traffic.client_secrets()
            traffic.malformed()
            upstream_running.close()
            traffic.upstream_down()
            store_running.close()
            traffic.store_down()
        return proxy.output, traffic.minted


def test_no_credential_or_message_content_is_logged_at_the_default_level() -> None:
    output, minted = full_run()
    # the search covered real log output, error paths included
    assert "Application startup complete" in output
    assert "store" in output.lower()
    assert "upstream" in output.lower()
    assert leaks(output, minted) == [], output


def test_no_credential_or_message_content_is_logged_at_debug() -> None:
    # uvicorn and the proxy at debug (the access log stays off: query strings can carry keys)
    output, minted = full_run("--log-level", "debug")
    assert "Application startup complete" in output
    assert leaks(output, minted) == [], output


def test_json_request_lines_carry_ids_and_no_credential_or_message_content() -> None:
    output, minted = full_run(env={"STATEFULPROXY_LOG_FORMAT": "json", "STATEFULPROXY_ACCESS_LOG": "true"})
    assert leaks(output, minted) == [], output
    lines = [json.loads(line) for line in output.splitlines()]  # every line is one JSON object
    [startup] = [line for line in lines if line.get("event") == "startup"]
    assert startup["store"].startswith("redis://proxy:***@")
    assert startup["anonymous_sessions"] is True
    requests = [line for line in lines if line["logger"] == "statefulproxy.access"]
    assert len(requests) > 40
    assert all(line["request_id"] and line["method"] and "duration_ms" in line for line in requests)
    assert len({line["request_id"] for line in requests}) == len(requests)
    turns = [line for line in requests if line["kind"] == "session" and line.get("status") == 200]
    assert {"logs-tools", "logs-azure", "logs-keyed"} <= {line["session_id"] for line in turns}
    # each went upstream but the Idempotency-Key repeat, answered from the store
    assert [line["session_id"] for line in turns if "ttfb_ms" not in line] == ["logs-keyed"]
    assert any(line["path"].endswith("&api-key=***") for line in requests)
    # the upstream's cut stream is a warning of the proxy's own, not uvicorn's ERROR
    assert not any("returned without completing" in line["message"] for line in lines)
    assert any(line["message"].startswith("upstream response cut") for line in lines)
