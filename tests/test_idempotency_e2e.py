"""Idempotency-Key on chat turns (issue 4): a repeated request gets the reply its first attempt
recorded, with no upstream call and no second turn; on both stores, through real HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from harness import upstream as reply
from harness.cut_hop import CutFirstResponse
from harness.stack import Stack, running_stack, store_url_for


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


@pytest.fixture(params=["memory", "redis"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    with running_stack(store_url_for(request.param, redis_url)) as running:
        yield running


def chat(http: httpx2.Client, body: dict[str, Any], **headers: str) -> httpx2.Response:
    return http.post("/v1/chat/completions", json=body, headers=headers)


def contents(http: httpx2.Client, session_id: str) -> list[str]:
    return [m["content"] for m in http.get(f"/v1/sessions/{session_id}/messages").json()["data"]]


def test_the_sdks_retry_with_a_key_gets_the_recorded_reply(stack: Stack) -> None:
    # The connection is cut after the proxy recorded the turn, before the SDK has the answer;
    # the SDK resends the same request with the same headers, Idempotency-Key included.
    hop = CutFirstResponse(stack.url, b'"choices"')
    try:
        with openai.OpenAI(base_url=hop.url + "/v1", api_key="key-1", max_retries=2) as client:
            completion = client.chat.completions.create(
                model="m",
                messages=[user("once")],
                extra_headers={"session-id": "idem", "Idempotency-Key": "turn-1"},
            )
    finally:
        hop.close()
    assert hop.connections >= 2  # the first answer was lost and the SDK retried
    assert completion.choices[0].message.content == "reply 1"
    assert len(stack.upstream.chat_requests) == 1  # the retry did not go upstream
    with stack.http() as http:
        assert contents(http, "idem") == ["once", "reply 1"]  # recorded once


def test_a_retried_first_turn_of_a_new_session_finds_the_session_it_made(stack: Stack) -> None:
    # `store: true` without an id: the proxy names the session. With a key, the name is derived
    # from it, so the retry lands on the session its first attempt created, not on a new one.
    hop = CutFirstResponse(stack.url, b'"choices"')
    try:
        with openai.OpenAI(base_url=hop.url + "/v1", api_key="key-1", max_retries=2) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="m", messages=[user("hello")], store=True, extra_headers={"Idempotency-Key": "first"}
            )
    finally:
        hop.close()
    assert hop.connections >= 2
    session_id = raw.headers["x-session-id"]
    assert raw.parse().choices[0].message.content == "reply 1"
    assert len(stack.upstream.chat_requests) == 1
    with stack.http() as http:
        listed = [s["id"] for s in http.get("/v1/sessions").json()["data"]]
        assert listed == [session_id]  # one session, not one per attempt
        assert contents(http, session_id) == ["hello", "reply 1"]


def test_a_repeat_without_the_sdk_retry_header_is_answered_too(stack: Stack) -> None:
    body = {"model": "m", "messages": [user("pay")]}
    with stack.http() as http:
        first = chat(http, body, **{"session-id": "k", "idempotency-key": "pay-1"})
        again = chat(http, body, **{"session-id": "k", "idempotency-key": "pay-1"})
        other = chat(http, body, **{"session-id": "k", "idempotency-key": "pay-2"})  # a new key: a new turn
        assert contents(http, "k") == ["pay", "reply 1", "pay", "reply 2"]
    assert first.status_code == again.status_code == other.status_code == 200
    replayed, original = again.json()["choices"][0], first.json()["choices"][0]
    assert (replayed["message"]["role"], replayed["message"]["content"]) == ("assistant", "reply 1")
    assert original["message"]["content"] == "reply 1"
    assert replayed["finish_reason"] == original["finish_reason"] == "stop"
    assert again.headers["x-session-replayed"] == "true"
    assert "x-session-replayed" not in first.headers
    assert other.json()["choices"][0]["message"]["content"] == "reply 2"
    assert len(stack.upstream.chat_requests) == 2


def test_the_same_key_with_another_body_is_refused(stack: Stack) -> None:
    with stack.http() as http:
        chat(http, {"model": "m", "messages": [user("a")]}, **{"session-id": "r", "idempotency-key": "x"})
        reused = chat(http, {"model": "m", "messages": [user("b")]}, **{"session-id": "r", "idempotency-key": "x"})
        assert contents(http, "r") == ["a", "reply 1"]
    assert reused.status_code == 422
    error = reused.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "idempotency_key_reused",
        "Idempotency-Key",
        "invalid_request_error",
    )
    assert len(stack.upstream.chat_requests) == 1


def test_a_streamed_turn_is_replayed_as_a_stream(stack: Stack) -> None:
    calls = [("call_1", "lookup", '{"q": "x"}')]
    stack.upstream.push(reply.tool_calls(calls))
    with stack.client() as client:
        for _ in range(2):
            stream = client.chat.completions.create(
                model="m",
                messages=[user("find x")],
                stream=True,
                extra_headers={"session-id": "st", "Idempotency-Key": "find"},
            )
            assembled: dict[int, list[str]] = {}
            with stream:
                for chunk in stream:
                    for part in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                        fields = assembled.setdefault(part.index, ["", "", ""])
                        function = part.function
                        for i, piece in enumerate(
                            (part.id, function and function.name, function and function.arguments)
                        ):
                            fields[i] += piece or ""
            assert [tuple(fields) for fields in assembled.values()] == calls
    assert len(stack.upstream.chat_requests) == 1
    with stack.http() as http:
        assert http.get("/v1/sessions/st").json()["message_count"] == 2


def test_a_request_while_its_first_attempt_runs_waits_and_gets_its_reply(stack: Stack) -> None:
    release = threading.Event()
    stack.upstream.push(reply.hold(release))
    body = {"model": "m", "messages": [user("slow")]}
    headers = {"session-id": "w", "idempotency-key": "slow-1"}
    answers: list[httpx2.Response] = []

    def send() -> None:
        with stack.http() as http:
            answers.append(chat(http, body, **headers))

    first = threading.Thread(target=send)
    first.start()
    stack.upstream.wait_for_requests(1)
    second = threading.Thread(target=send)
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive()  # waiting for the session's lease, not answered, not forwarded
    release.set()
    first.join(timeout=10)
    second.join(timeout=10)
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json()["choices"][0]["message"]["content"] for a in answers] == ["reply 1", "reply 1"]
    assert sum(a.headers.get("x-session-replayed") == "true" for a in answers) == 1
    assert len(stack.upstream.chat_requests) == 1
    with stack.http() as http:
        assert contents(http, "w") == ["slow", "reply 1"]


def test_a_failed_turn_keeps_nothing_and_may_be_sent_again(stack: Stack) -> None:
    stack.upstream.push(reply.error(500))
    body = {"model": "m", "messages": [user("try")]}
    with stack.http() as http:
        assert chat(http, body, **{"session-id": "f", "idempotency-key": "t"}).status_code == 500
        again = chat(http, body, **{"session-id": "f", "idempotency-key": "t"})
        assert again.status_code == 200
        assert "x-session-replayed" not in again.headers
        assert contents(http, "f") == ["try", "reply 2"]
    assert len(stack.upstream.chat_requests) == 2


def test_keys_belong_to_their_credential_and_session(stack: Stack) -> None:
    body = {"model": "m", "messages": [user("same")]}
    with stack.http() as first, stack.http(api_key="key-2") as second:
        chat(first, body, **{"session-id": "shared", "idempotency-key": "k"})
        theirs = chat(second, body, **{"session-id": "shared", "idempotency-key": "k"})
        elsewhere = chat(first, body, **{"session-id": "other", "idempotency-key": "k"})
        assert contents(second, "shared") == ["same", "reply 2"]
        assert contents(first, "other") == ["same", "reply 3"]
    assert "x-session-replayed" not in theirs.headers
    assert "x-session-replayed" not in elsewhere.headers
    assert len(stack.upstream.chat_requests) == 3


def test_a_key_on_an_unrecorded_request_changes_nothing(stack: Stack) -> None:
    with stack.http() as http:
        chat(http, {"model": "m", "messages": [user("a")]}, **{"session-id": "u"})
        body = {"model": "m", "messages": [user("b")], "store": False}
        for _ in range(2):
            assert chat(http, body, **{"session-id": "u", "idempotency-key": "q"}).status_code == 200
        stateless = {"model": "m", "messages": [user("c")]}
        assert chat(http, stateless, **{"idempotency-key": "q"}).status_code == 200
        assert contents(http, "u") == ["a", "reply 1"]
    assert len(stack.upstream.chat_requests) == 4
    assert stack.upstream.chat_requests[-1].header("idempotency-key") == "q"  # passed through untouched


@pytest.mark.parametrize(
    "headers",
    [
        [("idempotency-key", "")],
        [("idempotency-key", "k" * 256)],
        [("idempotency-key", "caf\u00e9".encode())],
        [("idempotency-key", "a"), ("idempotency-key", "b")],
    ],
    ids=["empty", "too-long", "not-ascii", "twice"],
)
def test_a_bad_key_is_refused_before_anything_happens(stack: Stack, headers: list[tuple[str, str]]) -> None:
    with stack.http() as http:
        answer = http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [user("x")]},
            headers=[("session-id", "bad"), *headers],
        )
        assert http.get("/v1/sessions/bad").status_code == 404
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_idempotency_key"
    assert stack.upstream.chat_requests == []


def test_a_key_reused_after_its_ttl_opens_a_new_conversation(redis_url: str) -> None:
    # issue 10, defect 4: the id derived from the key alone reopened the old session and sent
    # its history upstream. Inside the TTL a repeat finds its session; past it, a fresh one.
    for store_url in ("memory://", redis_url):
        with running_stack(store_url, idempotency_ttl="0.3s") as stack, stack.http() as http:
            body = {"model": "m", "store": True, "messages": [user("first conversation")]}
            first = chat(http, body, **{"Idempotency-Key": "reused"})
            again = chat(http, body, **{"Idempotency-Key": "reused"})
            assert again.headers["x-session-id"] == first.headers["x-session-id"]
            assert again.headers["x-session-replayed"] == "true"
            expired = threading.Event()
            expired.wait(0.5)  # past idempotency_ttl: time has to pass, nothing to synchronise with
            later = chat(http, {**body, "messages": [user("another conversation")]}, **{"Idempotency-Key": "reused"})
            assert later.status_code == 200
            assert later.headers["x-session-id"] != first.headers["x-session-id"]
            assert stack.upstream.chat_requests[-1].json["messages"] == [user("another conversation")]
            assert contents(http, first.headers["x-session-id"]) == ["first conversation", "reply 1"]
            assert contents(http, later.headers["x-session-id"]) == ["another conversation", "reply 2"]
