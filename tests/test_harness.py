"""Tests of the end-to-end harness itself: the scripted upstream served by a real uvicorn, driven by the real SDK."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
import pytest
from starlette.applications import Starlette

from harness.servers import ServerStartupError, run_server, serve
from harness.upstream import (
    ScriptedUpstream,
    cut,
    echo_json,
    error,
    gzip_json,
    hold,
    inband_error,
    no_done,
    raw,
    refusal,
    stream_bytes_payload,
    text,
    tool_calls,
)

USER = [{"role": "user", "content": "hi"}]
DEADLINE = 5.0


@pytest.fixture
def upstream() -> ScriptedUpstream:
    return ScriptedUpstream()


@pytest.fixture
def url(upstream: ScriptedUpstream) -> Iterator[str]:
    with serve(upstream) as base_url:
        yield base_url


@pytest.fixture
def client(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as sdk_client:
        yield sdk_client


@pytest.fixture
def http(url: str) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=url) as http_client:
        yield http_client


def sse_payloads(body: bytes) -> list[str]:
    return [event.removeprefix(b"data: ").decode() for event in body.split(b"\n\n") if event]


def test_default_replies_count_turns_and_usage_is_deterministic(
    client: openai.OpenAI, upstream: ScriptedUpstream
) -> None:
    first = client.chat.completions.create(model="gpt-x", messages=USER)
    second = client.chat.completions.create(
        model="gpt-x", messages=[*USER, {"role": "assistant", "content": "reply 1"}, *USER]
    )

    assert first.id == "chatcmpl-1"
    assert first.model == "gpt-x"
    assert first.choices[0].message.content == "reply 1"
    assert first.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "reply 2"
    assert second.usage is not None
    assert (second.usage.prompt_tokens, second.usage.completion_tokens, second.usage.total_tokens) == (30, 7, 37)


def test_requests_are_recorded_with_headers_and_body(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    client.chat.completions.create(
        model="gpt-x", messages=USER, extra_headers={"Session-Id": "abc"}, extra_body={"metadata": {"k": "v"}}
    )

    [request] = upstream.received
    assert (request.method, request.path, request.raw_path) == ("POST", "/v1/chat/completions", b"/v1/chat/completions")
    assert request.header("session-id") == "abc"
    assert request.header("authorization") == "Bearer k"
    assert ("content-type", "application/json") in request.headers
    assert request.json == {"model": "gpt-x", "messages": USER, "metadata": {"k": "v"}}
    assert json.loads(request.body) == request.json
    assert request.disconnected_at is None


def test_streamed_text_with_reasoning_and_usage(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    upstream.push(text("hello world", reasoning="think", reasoning_field="reasoning", chunk_size=3))

    stream = client.chat.completions.create(
        model="gpt-x", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    with stream:
        chunks = list(stream)

    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning", "") for c in chunks if c.choices)
    assert content == "hello world"
    assert reasoning == "think"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len("hello world") + len("think")
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {"chatcmpl-1"}


def test_streamed_parallel_tool_calls_interleave(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    calls = [("call_a", "get_weather", '{"city": "Paris"}'), ("call_b", "get_time", '{"tz": "CET"}')]
    upstream.push(tool_calls(calls, chunk_size=5))

    with client.chat.completions.create(model="gpt-x", messages=USER, stream=True) as stream:
        fragments = [tc for chunk in stream if chunk.choices for tc in chunk.choices[0].delta.tool_calls or []]

    assert [f.index for f in fragments[:4]] == [0, 1, 0, 1]
    assert (fragments[0].id, fragments[0].function and fragments[0].function.name) == ("call_a", "get_weather")
    assert all(f.id is None for f in fragments[2:])
    arguments = {0: "", 1: ""}
    for fragment in fragments:
        assert fragment.function is not None
        arguments[fragment.index] += fragment.function.arguments or ""
    assert arguments == {0: calls[0][2], 1: calls[1][2]}


def test_non_streamed_tool_calls_and_refusal(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    upstream.push(tool_calls([("call_1", "f", "{}")], content="calling"), refusal("no can do"))

    called = client.chat.completions.create(model="gpt-x", messages=USER)
    refused = client.chat.completions.create(model="gpt-x", messages=USER)

    message = called.choices[0].message
    assert called.choices[0].finish_reason == "tool_calls"
    assert message.content == "calling"
    assert message.tool_calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [("call_1", "f", "{}")]
    assert refused.choices[0].message.refusal == "no can do"
    assert refused.choices[0].message.content is None


def test_error_status_raises_in_sdk(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    upstream.push(error(429))

    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-x", messages=USER, stream=True)

    assert caught.value.status_code == 429
    assert upstream.pending == 0


def test_cut_stream_errors_instead_of_completing(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    upstream.push(cut(after_chunks=2))

    received: list[str] = []
    with (
        pytest.raises((openai.APIConnectionError, httpx2.RemoteProtocolError)),
        client.chat.completions.create(model="gpt-x", messages=USER, stream=True) as stream,
    ):
        received.extend(chunk.choices[0].delta.content or "" for chunk in stream)

    assert "".join(received) != "reply 1"


def test_inband_error_after_200_raises_in_sdk(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    upstream.push(inband_error(after_chunks=2, error={"message": "overloaded", "type": "server_error"}))

    with (
        pytest.raises(openai.APIError, match="overloaded"),
        client.chat.completions.create(model="gpt-x", messages=USER, stream=True) as stream,
    ):
        list(stream)


def test_no_done_stream_ends_without_done(http: httpx2.Client, upstream: ScriptedUpstream) -> None:
    upstream.push(no_done(text("ab", chunk_size=1)))

    response = http.post("/v1/chat/completions", json={"messages": USER, "stream": True})

    payloads = sse_payloads(response.content)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in payloads
    assert json.loads(payloads[-1])["choices"][0]["finish_reason"] == "stop"
    assert len(payloads) == 4  # role, "a", "b", finish


def test_hold_and_client_close_is_seen_as_disconnect(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    release = threading.Event()
    upstream.push(hold(release))

    stream = client.chat.completions.create(model="gpt-x", messages=USER, stream=True)
    first = next(iter(stream))
    assert not upstream.disconnected.is_set()
    closed_at = time.monotonic()
    stream.close()

    assert upstream.disconnected.wait(DEADLINE)
    assert first.choices[0].delta.role == "assistant"
    assert upstream.disconnected_at is not None
    assert upstream.disconnected_at - closed_at < 1.0
    assert upstream.received[0].disconnected_at == upstream.disconnected_at


def test_hold_released_completes_normally(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    release = threading.Event()
    upstream.push(hold(release, reply=text("all done")))

    with client.chat.completions.create(model="gpt-x", messages=USER, stream=True) as stream:
        chunks = iter(stream)
        head = next(chunks)
        release.set()
        rest = list(chunks)

    assert "".join(c.choices[0].delta.content or "" for c in [head, *rest]) == "all done"
    assert not upstream.disconnected.is_set()


def test_models_list(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["scripted-model"]


def test_catch_all_echoes_the_request(http: httpx2.Client) -> None:
    response = http.put("/v1/files/x?purpose=a%20b", content=b"\xffraw", headers={"x-custom": "1"})

    echoed = response.json()
    assert response.status_code == 200
    assert (echoed["method"], echoed["path"], echoed["query_string"]) == ("PUT", "/v1/files/x", "purpose=a%20b")
    assert ["x-custom", "1"] in echoed["headers"]
    assert echoed["body"].encode("latin-1") == b"\xffraw"


def test_echo_bytes_and_stream_bytes(http: httpx2.Client) -> None:
    echoed = http.post("/echo-bytes", content=b"\x00\x01abc", headers={"content-type": "application/x-thing"})
    with http.stream("GET", "/v1/stream-bytes?n=5&size=1000") as response:
        pieces = list(response.iter_raw())

    assert echoed.content == b"\x00\x01abc"
    assert echoed.headers["content-type"] == "application/x-thing"
    assert b"".join(pieces) == stream_bytes_payload(5, 1000)
    assert len(stream_bytes_payload(5, 1000)) == 5000
    assert stream_bytes_payload(2, 10)[:10] != stream_bytes_payload(2, 10)[10:]


def test_gzip_and_raw_replies(http: httpx2.Client, upstream: ScriptedUpstream) -> None:
    upstream.push(gzip_json({"hello": "gz"}))
    upstream.push(raw(207, [("x-kind", "raw")], [b"one ", b"two"]), path="/v1/anything")

    zipped = http.post("/v1/chat/completions", json={"messages": USER})
    with http.stream("POST", "/v1/chat/completions", json={"messages": USER}) as second:
        second.read()
    raw_response = http.get("/v1/anything")

    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.json() == {"hello": "gz"}
    assert second.json()["choices"][0]["message"]["content"] == "reply 2"
    assert (raw_response.status_code, raw_response.headers["x-kind"], raw_response.content) == (207, "raw", b"one two")


def test_gzip_reply_is_really_compressed_on_the_wire(http: httpx2.Client, upstream: ScriptedUpstream) -> None:
    upstream.push(gzip_json())

    with http.stream("POST", "/v1/chat/completions", json={"messages": USER}) as response:
        wire = b"".join(response.iter_raw())

    assert json.loads(gzip.decompress(wire))["choices"][0]["message"]["content"] == "reply 1"


def test_wait_for_requests_times_out_and_sees_arrivals(http: httpx2.Client, upstream: ScriptedUpstream) -> None:
    with pytest.raises(TimeoutError):
        upstream.wait_for_requests(1, timeout=0.01)
    http.get("/v1/models")
    assert [r.path for r in upstream.wait_for_requests(1)] == ["/v1/models"]
    assert echo_json(upstream.received[0])["method"] == "GET"


def test_server_handle_runs_coroutines_on_the_server_loop() -> None:
    async def where() -> tuple[str, Any]:
        return threading.current_thread().name, asyncio.get_running_loop()

    with run_server(ScriptedUpstream()) as server:
        thread_name, loop = server.call(where)

    assert thread_name == f"uvicorn-127.0.0.1:{server.port}"
    assert loop is server.loop
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_lifespan_runs_and_failing_startup_fails_fast() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def good(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    @contextlib.asynccontextmanager
    async def bad(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("no database")
        yield  # pragma: no cover

    with serve(Starlette(lifespan=good)) as base_url, httpx2.Client() as http:
        assert events == ["startup"]
        assert http.get(base_url + "/nowhere").status_code == 404
    assert events == ["startup", "shutdown"]

    started = time.monotonic()
    with pytest.raises(ServerStartupError, match="no database"), serve(Starlette(lifespan=bad)):
        pass  # pragma: no cover
    assert time.monotonic() - started < DEADLINE


def test_uvloop_variant(upstream: ScriptedUpstream) -> None:
    with serve(upstream, loop="uvloop") as base_url, httpx2.Client() as http:
        response = http.post(base_url + "/v1/chat/completions", json={"messages": USER, "stream": True})

    assert sse_payloads(response.content)[-1] == "[DONE]"
