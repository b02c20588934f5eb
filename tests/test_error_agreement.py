"""The same fault gets the same answer from every API (issue 11, item 9): the chat path, the
management API and the simple chat API word a body that is not JSON, an unknown session and a
body too large alike, with OpenAI's error types. Over both stores."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from typing import Any

import openai
import orjson
import pytest

from harness.stack import Stack, running_stack, store_url_for

CHAT = "/v1/chat/completions"
SIMPLE = "/api/v1/chat"
MAX_BODY = 64 * 1024
UNKNOWN = "sess_" + "0" * 32


@pytest.fixture(scope="module", params=["memory", "redis"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    store = store_url_for(request.param, redis_url)
    with running_stack(store, simple_chat_prefix=SIMPLE, max_body_size=MAX_BODY) as running:
        yield running


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def fault(error: openai.APIStatusError) -> tuple[int, str, str, str | None]:
    body = error.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}  # the OpenAI error object
    return error.status_code, body["message"], body["type"], body["code"]


def test_an_unknown_session_is_the_same_404_in_chat_and_management(stack: Stack) -> None:
    before = len(stack.upstream.received)
    expected = (404, f"No session found with id '{UNKNOWN}'.", "invalid_request_error", "not_found")
    with stack.client() as client:
        with pytest.raises(openai.NotFoundError) as chat:
            client.chat.completions.create(model="m", messages=[user("x")], metadata={"session_id": UNKNOWN})
        assert fault(chat.value) == expected
        path = f"/sessions/{UNKNOWN}"
        calls: list[Callable[[], object]] = [
            lambda: client.get(path, cast_to=object),
            lambda: client.post(path, body={"title": "t"}, cast_to=object),
            lambda: client.delete(path, cast_to=object),
            lambda: client.get(path + "/messages", cast_to=object),
            lambda: client.post(path + "/end", cast_to=object),
            lambda: client.post(path + "/fork", cast_to=object),
        ]
        for call in calls:
            with pytest.raises(openai.NotFoundError) as management:
                call()
            assert fault(management.value) == expected
        # an unknown path under the management API: OpenAI's type for an unknown URL too
        with pytest.raises(openai.NotFoundError) as unknown_path:
            client.get(f"/sessions/{UNKNOWN}/nowhere", cast_to=object)
        assert fault(unknown_path.value)[2] == "invalid_request_error"
    with stack.http() as http:
        simple = http.post(f"{SIMPLE}/completions", json={"message": "x", "sessionId": UNKNOWN})
    assert (simple.status_code, simple.json()) == (404, {"success": False, "error": expected[1]})
    assert len(stack.upstream.received) == before  # nothing was forwarded


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        (b"{not json", "The request body is not valid JSON.", "invalid_json"),
        (b'{"messages": [', "The request body is not valid JSON.", "invalid_json"),
        (b"[1, 2]", "The request body must be a JSON object.", "invalid_body"),
        (b'"hello"', "The request body must be a JSON object.", "invalid_body"),
        (b"null", "The request body must be a JSON object.", "invalid_body"),
    ],
)
def test_a_body_that_is_no_json_object_gets_one_message_everywhere(
    stack: Stack, body: bytes, message: str, code: str
) -> None:
    before = len(stack.upstream.received)
    expected = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    with stack.http() as http:
        session_id = http.post("/v1/sessions", json={}).json()["id"]
        answers = [
            http.post(CHAT, content=body, headers={"session-id": "agree", "content-type": "application/json"}),
            http.post("/v1/sessions", content=body),
            http.post(f"/v1/sessions/{session_id}", content=body),
            http.post(f"/v1/sessions/{session_id}/fork", content=body),
        ]
        for answer in answers:
            assert (answer.status_code, answer.json()) == (400, {"error": expected}), answer.request.url
        simple = http.post(f"{SIMPLE}/completions", content=body)
        assert (simple.status_code, simple.json()) == (400, {"success": False, "error": message})
        assert http.get("/v1/sessions/agree").status_code == 404
    assert len(stack.upstream.received) == before


def test_a_chat_body_over_the_cap_names_max_body_size_and_the_limit(stack: Stack) -> None:
    before = len(stack.upstream.received)
    expected = (413, f"The request body is larger than max_body_size ({MAX_BODY} bytes).", "invalid_request_error")
    with stack.client(default_headers={"session-id": "too-big"}) as client, pytest.raises(openai.APIStatusError) as big:
        client.chat.completions.create(model="m", messages=[user("x" * MAX_BODY)])
    assert fault(big.value)[:3] == expected
    assert fault(big.value)[3] == "request_too_large"
    stateless = orjson.dumps({"model": "m", "messages": [user("x" * MAX_BODY)]})
    small_but_inflating = gzip.compress(orjson.dumps({"model": "m", "messages": [user(" " * MAX_BODY)]}))
    assert len(small_but_inflating) < MAX_BODY
    with stack.http() as http:
        chunked = http.post(CHAT, content=iter([stateless[:1000], stateless[1000:]]))  # stateless, no length announced
        inflated = http.post(
            CHAT, content=small_but_inflating, headers={"content-encoding": "gzip", "session-id": "too-big"}
        )
    assert (chunked.status_code, chunked.json()["error"]["message"]) == expected[:2]
    assert inflated.status_code == 413
    assert (
        inflated.json()["error"]["message"]
        == f"The decoded request body is larger than max_body_size ({MAX_BODY} bytes)."
    )
    assert len(stack.upstream.received) == before


def test_a_management_body_over_its_cap_names_the_limit(stack: Stack) -> None:
    limit = 1024 * 1024  # the management API's own: max_body_size is the chat requests' cap
    message = f"The request body is larger than the {limit} bytes this endpoint accepts."
    with stack.client() as client, pytest.raises(openai.APIStatusError) as caught:
        client.post("/sessions", body={"title": "x" * limit}, cast_to=object)
    assert fault(caught.value) == (413, message, "invalid_request_error", "request_too_large")
    with stack.http() as http:
        simple = http.post(f"{SIMPLE}/completions", json={"message": "x" * limit, "sessionId": "s"})
    assert (simple.status_code, simple.json()) == (413, {"success": False, "error": message})
