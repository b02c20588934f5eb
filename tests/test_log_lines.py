"""The proxy's log lines (CONTRACT.md section 7, Logs): request ids, redaction, one line per incident.

The pure parts (redaction, the incident window, the JSON formatter, the background failure
handler) are tested directly; request ids, the startup line and cut streams through a real
``python -m statefulproxy`` process, whose own logging configuration is the one under test.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
from typing import Any

import httpx2
import pytest

from harness import upstream as reply
from harness.proxy_process import clean_environ, proxy_process
from harness.servers import serve
from harness.upstream import ScriptedUpstream
from statefulproxy.logs import (
    REQUEST_ID,
    IncidentFilter,
    Incidents,
    JsonFormatter,
    background_failure_handler,
    redacted_query,
    redacted_url,
)

CHAT = "/v1/chat/completions"


@pytest.mark.parametrize(
    ("query", "logged"),
    [
        ("", ""),
        ("api-version=2024-10-21", "api-version=2024-10-21"),
        ("key=AIza123", "key=***"),
        ("alt=sse&key=AIza123", "alt=sse&key=***"),
        ("api-key=s3&api_key=s3&x-goog-api-key=s3", "api-key=***&api_key=***&x-goog-api-key=***"),
        ("access_token=t&client_secret=c", "access_token=***&client_secret=***"),
        ("password=p&sig=abc", "password=***&sig=***"),
        ("API%2DKEY=s3", "API%2DKEY=***"),  # names are matched decoded, shown as sent
        ("limit=5&after=sess_1", "limit=5&after=sess_1"),
    ],
)
def test_secret_query_parameters_are_redacted(query: str, logged: str) -> None:
    assert redacted_query(query) == logged


def test_long_queries_are_shortened() -> None:
    assert redacted_query("a=" + "x" * 2000).endswith("...")
    assert len(redacted_query("a=" + "x" * 2000)) < 600


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        ("memory://", "memory://"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("redis://user:hunter2@redis:6379/0", "redis://user:***@redis:6379/0"),
        ("rediss://:hunter2@redis:6380", "rediss://:***@redis:6380"),
        ("redis://u:p@ss@word@redis/1", "redis://u:***@redis/1"),  # a password may hold an @
        ("redis://user@redis", "redis://user@redis"),
        ("unix:///run/redis.sock?db=2&password=hunter2", "unix:///run/redis.sock?db=2&password=***"),
        ("redis+sentinel://u:hunter2@s1:26379,s2:26379/main/0", "redis+sentinel://u:***@s1:26379,s2:26379/main/0"),
    ],
)
def test_store_urls_are_logged_without_passwords(url: str, logged: str) -> None:
    assert redacted_url(url) == logged


def test_an_incident_is_one_line_a_window() -> None:
    now = [0.0]
    incidents = Incidents(window=60.0, clock=lambda: now[0])
    assert incidents.admit("store down") == 0
    assert [incidents.admit("store down") for _ in range(5)] == [None] * 5
    assert incidents.admit("other") == 0  # another kind of failure is its own incident
    now[0] = 61.0
    assert incidents.admit("store down") == 5  # logged again, saying how many were left out
    now[0] = 500.0
    assert incidents.admit("store down") == 0


def test_the_incident_filter_passes_info_and_counts_what_it_left_out() -> None:
    incident_filter = IncidentFilter()

    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("statefulproxy", level, __file__, 1, message, ("x",), None)

    assert all(incident_filter.filter(record(logging.INFO, "turn %s")) for _ in range(3))
    assert incident_filter.filter(record(logging.ERROR, "store down: %s"))
    assert not incident_filter.filter(record(logging.ERROR, "store down: %s"))
    incident_filter.incidents.clock = lambda: float("inf")
    again = record(logging.ERROR, "store down: %s")
    assert incident_filter.filter(again)
    assert again.getMessage() == "store down: x (and 1 more like this in the last 60 s)"


def test_a_json_line_is_one_object_with_fields_request_id_and_error() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord("statefulproxy", logging.ERROR, __file__, 1, "it failed: %s", ("x",), sys.exc_info())
    record.fields = {"session_id": "s1"}
    token = REQUEST_ID.set("req-1")
    try:
        line = JsonFormatter().format(record)
    finally:
        REQUEST_ID.reset(token)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "error"
    assert parsed["message"] == "it failed: x"
    assert (parsed["session_id"], parsed["request_id"]) == ("s1", "req-1")
    assert parsed["error"] == "ValueError: bad\nthing"
    assert "Traceback" in parsed["traceback"]


def test_a_failed_background_task_is_one_line_an_incident_not_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def fail() -> None:
        raise ConnectionResetError("the store went away")

    async def drop_failed_tasks() -> None:
        asyncio.get_running_loop().set_exception_handler(background_failure_handler(Incidents()))
        for _ in range(3):
            task = asyncio.get_running_loop().create_task(fail())
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert task.done()
            del task
            gc.collect()  # the task is freed unretrieved: asyncio reports it to the handler

    with caplog.at_level(logging.INFO, logger="statefulproxy"):
        asyncio.run(drop_failed_tasks())
    failures = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert [record.getMessage() for record in failures] == [
        "background task failed: ConnectionResetError: the store went away"
    ]
    assert failures[0].exc_info is None
    assert "never retrieved" not in caplog.text


def run_proxy(upstream_url: str, **settings: str) -> Any:
    env = clean_environ(**{f"STATEFULPROXY_{key.upper()}": value for key, value in settings.items()})
    return proxy_process(["--upstream", upstream_url], env)


def test_request_ids_are_taken_minted_and_echoed_and_the_upstream_s_own_is_kept() -> None:
    upstream = ScriptedUpstream()
    with (
        serve(upstream, loop="uvloop") as upstream_url,
        run_proxy(upstream_url, access_log="true", log_format="json") as (url, proxy),
    ):
        with httpx2.Client(base_url=url, timeout=10) as http:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            given = http.post(CHAT, json=body, headers={"x-request-id": "client-id-1"})
            minted = http.post(CHAT, json=body)
            insane = http.post(CHAT, json=body, headers={"x-request-id": "x" * 200})
            upstream.push(reply.error(429, headers=[("x-request-id", "req_provider_1")]))
            provider = http.post(CHAT, json=body, headers={"session-id": "s1", "x-request-id": "client-id-2"})
            bad_json = {"session-id": "s1", "content-type": "application/json"}
            refused = http.post(CHAT, content=b"{", headers=bad_json)
        output = proxy.stop()
    assert given.headers["x-request-id"] == "client-id-1"
    assert minted.headers["x-request-id"] not in ("", "client-id-1")
    assert insane.headers["x-request-id"] != "x" * 200
    assert provider.headers.get_list("x-request-id") == ["client-id-2"]
    assert provider.headers["x-upstream-request-id"] == "req_provider_1"  # the provider's own, kept
    assert refused.status_code == 400
    assert refused.headers["x-request-id"]
    lines = [json.loads(line) for line in output.splitlines()]
    logged = {line["request_id"]: line for line in lines if line["logger"] == "statefulproxy.access"}
    assert logged["client-id-1"]["status"] == 200
    assert logged[minted.headers["x-request-id"]]["kind"] == "stateless"
    assert logged["client-id-2"]["upstream_request_id"] == "req_provider_1"
    assert logged["client-id-2"]["session_id"] == "s1"
    assert logged[refused.headers["x-request-id"]]["status"] == 400


def test_the_text_startup_line_and_a_cut_stream_without_error() -> None:
    upstream = ScriptedUpstream()
    with (
        serve(upstream, loop="uvloop") as upstream_url,
        run_proxy(upstream_url, require_credential="true") as (url, proxy),
    ):
        upstream.push(reply.cut(2, reply=reply.text("cut short " * 8)))
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with (
            httpx2.Client(base_url=url, timeout=10) as http,
            http.stream("POST", CHAT, json=body, headers={"authorization": "Bearer k"}) as response,
            pytest.raises(httpx2.HTTPError),
        ):
            response.read()
        proxy.wait_for("upstream response cut")
        output = proxy.stop()
    startup = next(line for line in output.splitlines() if "statefulproxy 0." in line)
    assert startup.startswith("INFO:")
    assert f"upstream {upstream_url}; store memory://;" in startup
    assert "sessions need a credential (require_credential: true)" in startup
    assert "WARNING:  store memory:// keeps sessions in this process only" in output
    assert "ERROR" not in output, output
