"""The minimal one-message chat API (CONTRACT.md section 3) over a scripted upstream, on both stores."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator

import httpx2
import pytest

from harness import upstream as reply
from harness.stack import Stack, running_stack, store_url_for

PREFIX = "/api/v1/chat"


@pytest.fixture(scope="module", params=["memory", "redis"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    with running_stack(store_url_for(request.param, redis_url), simple_chat_prefix=PREFIX) as running:
        yield running


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx2.Client]:
    with stack.http("simple-key") as client:
        yield client


def conversation() -> str:
    return f"conv-{uuid.uuid4().hex[:12]}"


def test_one_message_in_one_answer_out_with_the_history_spliced(stack: Stack, http: httpx2.Client) -> None:
    session_id = conversation()
    first = http.post(f"{PREFIX}/completions", json={"message": "hello", "sessionId": session_id})
    second = http.post(
        f"{PREFIX}/completions", json={"message": "again", "sessionId": session_id, "model": "m", "userId": "u7"}
    )
    assert first.status_code == second.status_code == 200
    answer = first.json()["data"]
    assert first.json() == {"success": True, "data": answer}
    assert second.json()["success"] is True
    assert second.headers["x-session-id"] == session_id
    upstream = stack.upstream.chat_requests[-1]
    assert upstream.path == "/v1/chat/completions"
    assert upstream.json == {
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "again"},
        ],
        "model": "m",
    }  # unknown fields (userId) and the session id never go upstream


def test_the_history_pages_oldest_first_twenty_a_page(stack: Stack, http: httpx2.Client) -> None:
    session_id = conversation()
    for turn in range(11):  # 22 messages
        assert (
            http.post(f"{PREFIX}/completions", json={"message": f"m{turn}", "sessionId": session_id}).status_code == 200
        )
    first = http.get(f"{PREFIX}/history/{session_id}", params={"page": 0}).json()
    second = http.get(f"{PREFIX}/history/{session_id}", params={"page": 1}).json()
    negative = http.get(f"{PREFIX}/history/{session_id}", params={"page": -4}).json()
    assert first["success"] is True
    assert len(first["data"]) == 20
    assert len(second["data"]) == 2
    assert negative == first
    assert [item["role"] for item in first["data"][:2]] == ["user", "assistant"]
    assert first["data"][0]["content"] == "m0"
    assert second["data"][0]["content"] == "m10"
    created = datetime.datetime.fromisoformat(first["data"][0]["createdAt"])
    assert created.tzinfo is not None
    assert abs(created.timestamp() - datetime.datetime.now(datetime.UTC).timestamp()) < 120
    assert http.get(f"{PREFIX}/history/{conversation()}").json() == {"success": True, "data": []}


def test_it_is_the_same_session_every_other_api_sees(stack: Stack, http: httpx2.Client) -> None:
    session_id = conversation()
    http.post(f"{PREFIX}/completions", json={"message": "from the widget", "sessionId": session_id})
    assert http.get(f"/v1/sessions/{session_id}").json()["message_count"] == 2
    http.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "from the sdk"}]},
        headers={"session-id": session_id},
    )
    history = http.get(f"{PREFIX}/history/{session_id}").json()["data"]
    assert [item["content"] for item in history if item["role"] == "user"] == ["from the widget", "from the sdk"]


def test_delete_removes_the_conversation(stack: Stack, http: httpx2.Client) -> None:
    session_id = conversation()
    http.post(f"{PREFIX}/completions", json={"message": "forget me", "sessionId": session_id})
    response = http.delete(f"{PREFIX}/{session_id}")
    assert response.status_code == 204
    assert response.content == b""
    assert http.get(f"{PREFIX}/history/{session_id}").json()["data"] == []
    assert http.get(f"/v1/sessions/{session_id}").status_code == 404


def test_sessions_belong_to_their_credential(stack: Stack, http: httpx2.Client) -> None:
    session_id = conversation()
    http.post(f"{PREFIX}/completions", json={"message": "mine", "sessionId": session_id})
    with stack.http("another-key") as other:
        assert other.get(f"{PREFIX}/history/{session_id}").json()["data"] == []
        assert other.delete(f"{PREFIX}/{session_id}").status_code == 204
    assert len(http.get(f"{PREFIX}/history/{session_id}").json()["data"]) == 2


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"sessionId": "s1"}, 400),
        ({"message": "", "sessionId": "s1"}, 400),
        ({"message": "hi"}, 400),
        ({"message": "hi", "sessionId": "bad id!"}, 400),
        ({"message": "hi", "sessionId": "sess_unknownminted"}, 404),
    ],
)
def test_bad_requests_are_success_false(stack: Stack, http: httpx2.Client, body: dict[str, str], status: int) -> None:
    before = len(stack.upstream.chat_requests)
    response = http.post(f"{PREFIX}/completions", json=body)
    assert response.status_code == status
    assert response.json()["success"] is False
    assert isinstance(response.json()["error"], str)
    assert len(stack.upstream.chat_requests) == before


def test_an_upstream_failure_is_success_false_and_records_nothing(stack: Stack, http: httpx2.Client) -> None:
    session_id = conversation()
    stack.upstream.push(reply.error(500))
    response = http.post(f"{PREFIX}/completions", json={"message": "boom", "sessionId": session_id})
    assert response.status_code == 500
    assert response.json() == {"success": False, "error": "scripted error 500"}
    assert http.get(f"/v1/sessions/{session_id}").status_code == 404


def test_not_json_and_unknown_paths(stack: Stack, http: httpx2.Client) -> None:
    assert http.post(f"{PREFIX}/completions", content=b"{nope").json()["success"] is False
    unknown = http.get(f"{PREFIX}/nothing/here")
    assert unknown.status_code == 404
    assert unknown.json()["success"] is False
