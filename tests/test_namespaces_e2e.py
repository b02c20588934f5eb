"""Session namespaces end to end (CONTRACT.md section 5): per-document chat, served as hosted APIs do."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx2
import openai
import pytest

from harness.stack import Stack, running_stack, store_url_for


@pytest.fixture(scope="module", params=["memory", "redis"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    with running_stack(
        store_url_for(request.param, redis_url), session_namespaces=["/document/{doc}"], simple_chat_prefix="/chat"
    ) as running:
        yield running


def test_a_document_keeps_its_own_sessions(stack: Stack) -> None:
    doc = f"d{uuid.uuid4().hex[:8]}"
    client = openai.OpenAI(base_url=f"{stack.url}/document/{doc}/v1", api_key="ns-key", max_retries=0)
    first = client.chat.completions.create(model="m", store=True, messages=[{"role": "user", "content": "about doc"}])
    session_id = first.metadata["session_id"]  # type: ignore[index]
    client.chat.completions.create(
        model="m", metadata={"session_id": session_id}, messages=[{"role": "user", "content": "more"}]
    )
    # the namespace is the proxy's: the upstream sees the path below it, with the history spliced
    last = stack.upstream.chat_requests[-1]
    assert last.path == "/v1/chat/completions"
    assert [message["content"] for message in last.json["messages"]] == [
        "about doc",
        first.choices[0].message.content,
        "more",
    ]

    with httpx2.Client(base_url=stack.url, headers={"authorization": "Bearer ns-key"}, timeout=10) as http:
        listed = http.get(f"/document/{doc}/sessions").json()["data"]
        assert [session["id"] for session in listed] == [session_id]
        assert listed[0]["namespace"] == f"/document/{doc}"
        assert http.get(f"/document/{doc}/sessions/{session_id}/messages").json()["data"][0]["content"] == "about doc"
        # another document does not see it, /v1/sessions sees everything of the owner
        assert http.get(f"/document/other-{doc}/sessions").json()["data"] == []
        assert http.get(f"/document/other-{doc}/sessions/{session_id}").status_code == 404
        assert session_id in [session["id"] for session in http.get("/v1/sessions").json()["data"]]
        # another credential sees nothing, in the namespace either
        assert http.get(f"/document/{doc}/sessions", headers={"authorization": "Bearer other"}).json()["data"] == []
        created = http.post(f"/document/{doc}/sessions", json={"title": "second"}).json()
        assert created["namespace"] == f"/document/{doc}"
        assert http.delete(f"/document/{doc}/sessions/{session_id}").status_code == 200
        assert http.get(f"/v1/sessions/{session_id}").status_code == 404


def test_simple_chat_extra_fields_are_kept_beside_the_turn(stack: Stack) -> None:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    with httpx2.Client(base_url=stack.url, headers={"authorization": "Bearer ns-key"}, timeout=10) as http:
        body = {"message": "hi", "sessionId": session_id, "userId": "u7", "tags": ["a"]}
        assert http.post("/chat/completions", json=body).json()["success"] is True
        messages = http.get(f"/v1/sessions/{session_id}/messages").json()["data"]
    assert messages[0]["metadata"] == {"userId": "u7", "tags": ["a"]}
    assert "metadata" not in messages[1]
    assert "userId" not in stack.upstream.chat_requests[-1].json
