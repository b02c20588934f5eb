"""``GET /metrics`` (CONTRACT.md section 7, Metrics): what is counted, with bounded labels only.

The proxy runs under uvicorn in front of a scripted upstream; each test drives real traffic and
reads the Prometheus text the proxy serves, parsed by prometheus_client's own parser.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import upstream as reply
from harness.proxy_process import free_port
from harness.servers import serve
from harness.stack import Stack, running_stack
from statefulproxy import ProxyApp, settings_from_mapping
from statefulproxy.metrics import DIALECT_LABELS, KINDS, REFUSAL_REASONS, STATUS_CLASSES, Histogram, refusal_reason

CHAT = "/v1/chat/completions"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, path: str = "/metrics") -> Samples:
    response = httpx2.get(url + path, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


@pytest.fixture
def stack() -> Iterator[Stack]:
    with running_stack("memory://", on_busy="reject") as running:
        yield running


def test_requests_are_counted_by_kind_dialect_and_status_class(stack: Stack) -> None:
    secret_session = f"sess-{uuid.uuid4().hex}"
    client_model = f"client-chose-{uuid.uuid4().hex}"
    with stack.http() as http:
        assert http.post(CHAT, json={"model": client_model, "messages": [user("a")]}).status_code == 200
        assert http.get("/v1/models").status_code == 200
        session = {"session-id": secret_session}
        for text in ("one", "two"):
            turn = http.post(CHAT, headers=session, json={"model": client_model, "messages": [user(text)]})
            assert turn.status_code == 200
        assert http.get("/v1/sessions").status_code == 200
        assert http.get("/v1/sessions/no-such-session").status_code == 404
        assert http.post(f"/v1/sessions/{secret_session}/end").status_code == 200
        assert http.post(CHAT, headers=session, json={"messages": [user("three")]}).status_code == 409
        stack.upstream.push(reply.error(500))
        assert http.post(CHAT, json={"messages": [user("b")]}).status_code == 500
    samples = scrape(stack.url)
    requests = "statefulproxy_requests_total"
    assert value(samples, requests, kind="stateless", dialect="openai", status_class="2xx") == 1
    assert value(samples, requests, kind="stateless", dialect="openai", status_class="5xx") == 1
    assert value(samples, requests, kind="stateless", dialect="none", status_class="2xx") == 1
    assert value(samples, requests, kind="session", dialect="openai", status_class="2xx") == 2
    assert value(samples, requests, kind="session", dialect="openai", status_class="4xx") == 1
    assert value(samples, requests, kind="management", dialect="none", status_class="2xx") == 2
    assert value(samples, requests, kind="management", dialect="none", status_class="4xx") == 1
    assert value(samples, "statefulproxy_turns_recorded_total") == 2
    assert value(samples, "statefulproxy_turns_refused_total", reason="ended") == 1
    assert value(samples, "statefulproxy_upstream_ttfb_seconds_count", kind="stateless") == 3  # /v1/models too
    assert value(samples, "statefulproxy_upstream_ttfb_seconds_count", kind="session") == 2
    assert value(samples, "statefulproxy_turn_duration_seconds_count", dialect="openai") == 3
    assert value(samples, "statefulproxy_store_command_duration_seconds_count", command="load") == 3
    assert value(samples, "statefulproxy_store_command_duration_seconds_count", command="commit") == 2
    assert value(samples, "statefulproxy_store_errors_total", command="load") == 0
    assert value(samples, "statefulproxy_sessions") == 1
    assert value(samples, "statefulproxy_build_info", version="0.1.0") == 1
    assert value(samples, "process_cpu_seconds_total") > 0


def test_no_label_carries_a_session_id_a_credential_or_a_model(stack: Stack) -> None:
    tag = uuid.uuid4().hex
    with stack.http(f"sk-{tag}") as http:
        body = {"model": f"model-{tag}", "messages": [user(tag)]}
        assert http.post(CHAT, headers={"session-id": f"s-{tag}"}, json=body).status_code == 200
        assert http.post(f"/v1/sessions/s-{tag}/end").status_code == 200
    text = httpx2.get(stack.url + "/metrics").text
    assert tag not in text
    allowed = {
        "kind": set(KINDS),
        "dialect": set(DIALECT_LABELS),
        "status_class": set(STATUS_CLASSES),
        "reason": set(REFUSAL_REASONS) | {"missing", "ended", "expired", "limited", "store_error", "cut"},
        "command": {"load", "commit", "create", "restore", "get", "list_sessions", "update", "messages"}
        | {"messages_page", "message_positions", "clear", "end", "delete", "renew_lease", "release_lease"}
        | {"put_client_secret", "client_secret", "owner_secret"},
        "le": None,
        "version": None,
    }
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("statefulproxy_"):
            continue
        for sample in family.samples:
            for label, label_value in sample.labels.items():
                assert label in allowed, (family.name, label)
                values = allowed[label]
                assert values is None or label_value in values, (family.name, label, label_value)


def test_a_busy_session_is_refused_and_its_lease_is_counted(stack: Stack) -> None:
    release = threading.Event()
    stack.upstream.push(reply.hold(release, reply=reply.text("held")))
    headers = {"session-id": "busy-1"}
    with stack.http() as http, stack.http() as other:
        body = {"stream": True, "messages": [user("first")]}
        with http.stream("POST", CHAT, headers=headers, json=body) as response:
            chunks = response.iter_raw()  # kept: a dropped iterator closes the response
            next(chunks)  # the turn holds the session's lease
            during = scrape(stack.url)
            assert other.post(CHAT, headers=headers, json={"messages": [user("second")]}).status_code == 409
            release.set()
            assert b"".join(chunks).rstrip().endswith(b"[DONE]")
    after = scrape(stack.url)
    assert value(during, "statefulproxy_leases_active") == 1
    assert value(during, "statefulproxy_session_turns_in_flight") == 1
    assert value(after, "statefulproxy_leases_active") == 0
    assert value(after, "statefulproxy_turns_refused_total", reason="busy") == 1
    assert value(after, "statefulproxy_turns_recorded_total") == 1


@pytest.mark.parametrize("scope_secret", [None, "s" * 32])
def test_store_failures_are_counted_by_command(scope_secret: str | None) -> None:
    # a Redis store nobody listens on: every command fails at once
    store = f"redis://127.0.0.1:{free_port()}/0"
    with running_stack(store, scope_secret=scope_secret) as stack, stack.http() as http:
        response = http.post(CHAT, headers={"session-id": "s1"}, json={"messages": [user("hi")]})
        assert response.status_code == 503
        samples = scrape(stack.url)
    if scope_secret is None:  # the owner's hash needs the store's secret first
        assert value(samples, "statefulproxy_store_errors_total", command="owner_secret") == 1
        return
    assert value(samples, "statefulproxy_store_errors_total", command="load") == 1
    assert value(samples, "statefulproxy_store_command_duration_seconds_count", command="load") == 1
    assert value(samples, "statefulproxy_turns_refused_total", reason="store_error") == 1
    assert value(samples, "statefulproxy_requests_total", kind="session", dialect="openai", status_class="5xx") == 1


def test_metrics_on_the_health_prefix_and_a_port_of_their_own() -> None:
    port = free_port()
    settings = settings_from_mapping(
        {"upstream": "http://127.0.0.1:9", "health_prefix": "/_", "metrics_port": port}, source="test"
    )
    with serve(ProxyApp(settings)) as url:
        assert httpx2.get(url + "/_/readyz").status_code == 200
        on_prefix = scrape(url, "/_/metrics")
        on_port = scrape(f"http://127.0.0.1:{port}")
        openmetrics = httpx2.get(url + "/_/metrics", headers={"accept": "application/openmetrics-text"})
    assert ("statefulproxy_shutting_down", frozenset()) in on_prefix
    assert ("statefulproxy_shutting_down", frozenset()) in on_port
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")


def test_a_metrics_port_in_use_stops_startup_with_its_name() -> None:
    from harness.servers import ServerStartupError

    with serve(ProxyApp(settings_from_mapping({"upstream": "http://127.0.0.1:9"}, source="test"))) as url:
        taken = int(url.rsplit(":", 1)[1])
        settings = settings_from_mapping({"upstream": "http://127.0.0.1:9", "metrics_port": taken}, source="test")
        with pytest.raises(ServerStartupError, match=f"metrics_port {taken}: "), serve(ProxyApp(settings)):
            pass


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    histogram = Histogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(seconds)
    assert histogram.buckets() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.count == 4
    assert histogram.total == pytest.approx(3.65)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("session_busy", "busy"),
        ("rate_limit_exceeded", "rate_limited"),
        ("max_requests_exceeded", "rate_limited"),
        ("session_ended", "ended"),
        ("session_expired", "ended"),
        ("store_unavailable", "store_error"),
        ("shutting_down", "shutting_down"),
        (None, "invalid"),
        ("anything else", "invalid"),
    ],
)
def test_refusal_reasons(code: str | None, reason: str) -> None:
    assert refusal_reason(code) == reason
