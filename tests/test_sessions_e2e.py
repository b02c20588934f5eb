"""Sessions end to end: the openai SDK -> the proxy under uvicorn -> a scripted upstream, over both stores."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from harness import upstream as reply
from harness.stack import Stack, running_stack, store_url_for


@pytest.fixture(params=["memory", "redis"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    with running_stack(store_url_for(request.param, redis_url)) as running:
        yield running


def sent_messages(stack: Stack, index: int = -1) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = stack.upstream.chat_requests[index].json["messages"]
    return messages


def history(stack: Stack, session_id: str, api_key: str = "key-1") -> list[dict[str, Any]]:
    with stack.http(api_key) as http:
        response = http.get(f"/v1/sessions/{session_id}/messages", params={"limit": 100})
    assert response.status_code == 200, response.text
    return [{k: v for k, v in m.items() if k not in ("id", "object", "created_at")} for m in response.json()["data"]]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def test_store_true_mints_a_session_and_resume_splices_history(stack: Stack) -> None:
    with stack.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="m", messages=[user("hi")], store=True)
        first = raw.parse()
        session_id = first.metadata["session_id"]  # type: ignore[index]
        assert session_id.startswith("sess_")
        assert len(session_id) == 5 + 32
        assert raw.headers["x-session-id"] == session_id
        second = client.chat.completions.create(
            model="m", messages=[user("again")], metadata={"session_id": session_id}, store=True
        )
    assert second.choices[0].message.content == "reply 2"
    assert sent_messages(stack) == [user("hi"), assistant("reply 1"), user("again")]
    forwarded = stack.upstream.chat_requests[-1].json
    assert "store" not in forwarded
    assert "metadata" not in forwarded
    assert history(stack, session_id) == [user("hi"), assistant("reply 1"), user("again"), assistant("reply 2")]


@pytest.mark.parametrize("header", ["session-id", "x-session-id", "sessionId", "session_id"])
def test_every_session_header_streams_a_stateful_conversation(stack: Stack, header: str) -> None:
    with stack.client(default_headers={header: "chat-1"}) as client:
        for text in ("one", "two"):
            stream = client.chat.completions.create(model="m", messages=[user(text)], stream=True)
            with stream:
                "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert sent_messages(stack) == [user("one"), assistant("reply 1"), user("two")]
    assert all(stack.upstream.chat_requests[-1].header(name) is None for name in (header, "session-id"))
    assert history(stack, "chat-1")[-1] == assistant("reply 2")


def test_streamed_tool_calls_are_recorded_and_replayed_minimal(stack: Stack) -> None:
    calls = [("call_a", "get_weather", '{"city": "Paris"}'), ("call_b", "get_time", '{"tz": "CET"}')]
    stack.upstream.push(reply.tool_calls(calls, chunk_size=3))
    with stack.client(default_headers={"session-id": "tools"}) as client:
        stream = client.chat.completions.create(model="m", messages=[user("weather?")], stream=True)
        with stream:
            for _ in stream:
                pass
        tool_results = [
            {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
        ]
        client.chat.completions.create(model="m", messages=tool_results)  # type: ignore[arg-type]
    replayed = sent_messages(stack)
    assert replayed[0] == user("weather?")
    assert replayed[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            for call_id, name, arguments in calls
        ],
    }
    assert replayed[2:] == tool_results


def test_full_array_client_never_duplicates_history(stack: Stack) -> None:
    transcript: list[dict[str, Any]] = [{"role": "system", "content": "be brief"}, user("one")]
    with stack.client(default_headers={"session-id": "codex-1"}) as client:
        for turn in range(3):
            answer = client.chat.completions.create(model="m", messages=transcript)  # type: ignore[arg-type]
            # what the SDK hands back, echoed as a coding agent would (refusal, annotations, ...)
            transcript.append(answer.choices[0].message.model_dump())
            transcript.append(user(f"next {turn}"))
            assert stack.upstream.chat_requests[-1].body.count(b"be brief") == 1
    stored = history(stack, "codex-1")
    assert len(stored) == 2 + 2 * 2 + 1  # system + 3 user/assistant pairs, without repeats
    assert [m["role"] for m in stored] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]


def test_system_prompt_sent_every_turn_is_not_repeated_and_a_new_one_replaces_it(stack: Stack) -> None:
    system = {"role": "system", "content": "you are terse"}
    with stack.client(default_headers={"x-session-id": "sys"}) as client:
        client.chat.completions.create(model="m", messages=[system, user("one")])  # type: ignore[list-item]
        client.chat.completions.create(model="m", messages=[system, user("two")])  # type: ignore[list-item]
        assert sent_messages(stack) == [system, user("one"), assistant("reply 1"), user("two")]
        changed = {"role": "developer", "content": "you are chatty"}
        client.chat.completions.create(model="m", messages=[changed, user("three")])  # type: ignore[list-item]
    assert sent_messages(stack) == [
        changed,
        user("one"),
        assistant("reply 1"),
        user("two"),
        assistant("reply 2"),
        user("three"),
    ]
    assert history(stack, "sys")[0] == changed
    assert len(history(stack, "sys")) == 7


def test_diverging_history_with_assistant_messages_replaces_it(stack: Stack) -> None:
    with stack.client(default_headers={"session-id": "edit"}) as client:
        client.chat.completions.create(model="m", messages=[user("one")])
        edited = [user("one, edited"), assistant("an answer I wrote"), user("go on")]
        client.chat.completions.create(model="m", messages=edited)  # type: ignore[arg-type]
    assert sent_messages(stack) == edited
    assert history(stack, "edit") == [*edited, assistant("reply 2")]


def test_store_false_splices_history_but_records_nothing(stack: Stack) -> None:
    with stack.client(default_headers={"session-id": "peek"}) as client:
        client.chat.completions.create(model="m", messages=[user("one")])
        client.chat.completions.create(model="m", messages=[user("what if")], store=False)
    assert sent_messages(stack) == [user("one"), assistant("reply 1"), user("what if")]
    assert "store" not in stack.upstream.chat_requests[-1].json
    assert history(stack, "peek") == [user("one"), assistant("reply 1")]


def test_unknown_minted_id_is_404_and_client_chosen_id_is_created(stack: Stack) -> None:
    with stack.client() as client:
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="m", messages=[user("x")], metadata={"session_id": "sess_" + "0" * 32})
        assert caught.value.body["code"] == "not_found"  # type: ignore[index]
        assert stack.upstream.chat_requests == []
        client.chat.completions.create(model="m", messages=[user("x")], metadata={"session_id": "mine"})
    assert history(stack, "mine") == [user("x"), assistant("reply 1")]


def test_ended_session_is_read_only(stack: Stack) -> None:
    with stack.client(default_headers={"session-id": "done"}) as client:
        client.chat.completions.create(model="m", messages=[user("one")])
        ended = client.post("/sessions/done/end", cast_to=object)
        assert ended["status"] == "ended"  # type: ignore[index]
        with pytest.raises(openai.ConflictError):
            client.chat.completions.create(model="m", messages=[user("two")])
    assert len(stack.upstream.chat_requests) == 1
    assert history(stack, "done") == [user("one"), assistant("reply 1")]


@pytest.mark.parametrize(
    ("headers", "body_extra", "code"),
    [
        ({"session-id": "has space"}, {}, "invalid_session_id"),
        ({"session-id": "x" * 129}, {}, "invalid_session_id"),
        ({}, {"metadata": {"session_id": "a/b"}}, "invalid_session_id"),
        ({}, {"session_id": 42}, "invalid_session_id"),
        ({"session-id": "a"}, {"metadata": {"session_id": "b"}}, "conflicting_session_id"),
        ({"session-id": "a", "x-session-id": "b"}, {}, "conflicting_session_id"),
    ],
)
def test_bad_session_ids_are_400_and_nothing_is_forwarded(
    stack: Stack, headers: dict[str, str], body_extra: dict[str, Any], code: str
) -> None:
    with stack.http() as http:
        body = {"model": "m", "messages": [user("x")], **body_extra}
        response = http.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert stack.upstream.chat_requests == []


@pytest.mark.parametrize(
    "body", [b"{not json", b"[1, 2]", b'{"model": "m"}', b'{"messages": "hi"}', b'{"messages": [{"content": 1}]}']
)
def test_malformed_session_requests_are_400_and_store_nothing(stack: Stack, body: bytes) -> None:
    with stack.http() as http:
        response = http.post("/v1/chat/completions", content=body, headers={"session-id": "bad-input"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert http.get("/v1/sessions/bad-input").status_code == 404
    assert stack.upstream.chat_requests == []


def test_sessions_are_scoped_to_the_credential(stack: Stack) -> None:
    with stack.client(api_key="key-1", default_headers={"session-id": "shared-name"}) as client:
        client.chat.completions.create(model="m", messages=[user("secret plan")])
    with stack.client(api_key="key-2", default_headers={"session-id": "shared-name"}) as other:
        other.chat.completions.create(model="m", messages=[user("hello")])
    # the same id under another key is another session: no history crosses over
    assert sent_messages(stack) == [user("hello")]
    with stack.http("key-3") as http:
        for method, path in [
            ("GET", "/v1/sessions/shared-name"),
            ("GET", "/v1/sessions/shared-name/messages"),
            ("POST", "/v1/sessions/shared-name/end"),
            ("DELETE", "/v1/sessions/shared-name"),
        ]:
            response = http.request(method, path)
            assert response.status_code == 404, (method, path)
            assert response.json()["error"]["code"] == "not_found"
    assert history(stack, "shared-name", "key-1") == [user("secret plan"), assistant("reply 1")]


def test_anonymous_requests_share_the_anonymous_scope(stack: Stack) -> None:
    with stack.http(api_key=None) as http:
        body = {"model": "m", "messages": [user("hi")]}
        assert http.post("/v1/chat/completions", json=body, headers={"session-id": "anon"}).status_code == 200
        assert http.get("/v1/sessions/anon").json()["message_count"] == 2
    with stack.http("key-1") as http:
        assert http.get("/v1/sessions/anon").status_code == 404


@pytest.mark.parametrize(
    "failure",
    [
        reply.error(500),
        reply.error(429),
        reply.inband_error(after_chunks=2),
        reply.no_done(),
    ],
    ids=["500", "429", "inband-error", "no-done"],
)
def test_failed_replies_are_relayed_and_record_nothing(stack: Stack, failure: reply.Reply) -> None:
    stack.upstream.push(failure)
    with stack.http() as http:
        body = {"model": "m", "messages": [user("x")], "stream": True}
        response = http.post("/v1/chat/completions", json=body, headers={"session-id": "fails"})
        assert response.headers["x-session-id"] == "fails"
        assert http.get("/v1/sessions/fails").status_code == 404
    if isinstance(failure, reply.ErrorReply):
        assert response.status_code == failure.status
        kind = "invalid_request_error" if failure.status < 500 else "server_error"
        scripted = {"message": f"scripted error {failure.status}", "type": kind, "param": None, "code": None}
        assert response.json() == {"error": scripted}  # the upstream's own body, relayed


def test_a_cut_stream_is_cut_to_the_client_and_records_nothing(stack: Stack) -> None:
    stack.upstream.push(reply.cut(after_chunks=2))
    with stack.client(default_headers={"session-id": "cut"}) as client:
        stream = client.chat.completions.create(model="m", messages=[user("x")], stream=True)
        with pytest.raises(openai.APIConnectionError), stream:
            for _ in stream:
                pass
    with stack.http() as http:
        assert http.get("/v1/sessions/cut").status_code == 404


def test_turns_are_recorded_before_the_client_sees_the_end(stack: Stack) -> None:
    # each turn is sent the instant the previous stream ended: it must see every earlier turn
    with stack.client(default_headers={"session-id": "eager"}) as client:
        for turn in range(5):
            stream = client.chat.completions.create(model="m", messages=[user(f"u{turn}")], stream=True)
            with stream:
                for _ in stream:
                    pass
            assert len(sent_messages(stack)) == 2 * turn + 1


def test_concurrent_turns_each_land_whole(stack: Stack) -> None:
    errors: list[BaseException] = []

    def turn(index: int) -> None:
        try:
            with stack.client(default_headers={"session-id": "busy"}) as client:
                client.chat.completions.create(model="m", messages=[user(f"u{index}")])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=turn, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    stored = history(stack, "busy")
    assert len(stored) == 24
    for position in range(0, 24, 2):  # every user message is followed by its own reply
        assert stored[position]["role"] == "user"
        assert stored[position + 1]["role"] == "assistant"


def test_reasoning_is_kept_beside_the_message_and_not_replayed(stack: Stack) -> None:
    stack.upstream.push(reply.text("42", reasoning="thinking hard"))
    with stack.client(default_headers={"session-id": "think"}) as client:
        stream = client.chat.completions.create(model="m", messages=[user("meaning?")], stream=True)
        with stream:
            for _ in stream:
                pass
        client.chat.completions.create(model="m", messages=[user("sure?")])
    assert sent_messages(stack)[1] == assistant("42")
    with stack.http() as http:
        messages = http.get("/v1/sessions/think/messages").json()["data"]
    assert messages[1]["reasoning"] == "thinking hard"


def test_gzip_reply_is_recorded_and_delivered(stack: Stack) -> None:
    completion = {
        "id": "c1",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "zipped"}, "finish_reason": "stop"}],
    }
    stack.upstream.push(reply.gzip_json(completion))
    with stack.client(default_headers={"session-id": "gz"}) as client:
        answer = client.chat.completions.create(model="m", messages=[user("x")])
    assert answer.choices[0].message.content == "zipped"
    assert answer.metadata == {"session_id": "gz"}
    assert history(stack, "gz")[-1] == assistant("zipped")


def test_management_reads_pages_ends_and_deletes(stack: Stack) -> None:
    with stack.client(default_headers={"session-id": "long"}) as client:
        for turn in range(13):
            client.chat.completions.create(model="m", messages=[user(f"u{turn}")])
    with stack.http() as http:
        session = http.get("/v1/sessions/long").json()
        assert session["object"] == "session"
        assert session["message_count"] == 26
        assert session["title"] == "u0"
        assert session["status"] == "active"
        assert session["expires_at"] is None
        assert session["usage"]["total_tokens"] > 0
        walked: list[str] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 10, **({"after": after} if after else {})}
            page = http.get("/v1/sessions/long/messages", params=params).json()
            walked += [m["id"] for m in page["data"]]
            if not page["has_more"]:
                break
            after = page["last_id"]
        by_page = [
            m["id"] for n in range(2) for m in http.get("/v1/sessions/long/messages", params={"page": n}).json()["data"]
        ]
        assert len(walked) == 26
        assert walked == by_page
        assert walked == sorted(walked)  # one proxy mints ids in history order
        assert len(set(walked)) == 26
        desc = http.get("/v1/sessions/long/messages", params={"order": "desc", "limit": 3}).json()
        assert [m["id"] for m in desc["data"]] == walked[::-1][:3]
        deleted = http.delete("/v1/sessions/long").json()
        assert deleted == {"id": "long", "object": "session.deleted", "deleted": True}
        assert http.get("/v1/sessions/long").status_code == 404
        assert http.get("/v1/sessions/long/messages").status_code == 404


def test_stateless_chat_requests_pass_through_byte_for_byte(stack: Stack) -> None:
    body = b'{"model":"m",  "messages":[{"role":"user","content":"h\\u00e9 session_id"}], "store": false}'
    with stack.http() as http:
        response = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert "x-session-id" not in response.headers
    received = stack.upstream.chat_requests[-1]
    assert received.body == body
    assert received.header("authorization") == "Bearer key-1"


def test_session_reply_json_names_the_session() -> None:
    # the rewritten reply body is still the upstream's JSON with one added key
    with running_stack("memory://") as stack, stack.http() as http:
        body = {"model": "m", "messages": [user("x")]}
        response = http.post("/v1/chat/completions", json=body, headers={"session-id": "named"})
    payload = response.json()
    assert payload["metadata"] == {"session_id": "named"}
    assert payload["choices"][0]["message"]["content"] == "reply 1"
    assert int(response.headers["content-length"]) == len(response.content)
    assert json.loads(response.content) == payload


def test_request_metadata_becomes_the_new_sessions_metadata_and_is_not_forwarded(stack: Stack) -> None:
    with stack.client() as client:
        client.chat.completions.create(
            model="m", messages=[user("x")], store=True, metadata={"session_id": "meta", "team": "blue"}
        )
    assert "metadata" not in stack.upstream.chat_requests[-1].json
    with stack.http() as http:
        assert http.get("/v1/sessions/meta").json()["metadata"] == {"team": "blue"}


def test_upstream_x_session_id_header_is_not_duplicated(stack: Stack) -> None:
    stack.upstream.push(reply.error(400, headers=[("x-session-id", "upstream-own")]))
    with stack.http() as http:
        body = {"model": "m", "messages": [user("x")]}
        response = http.post("/v1/chat/completions", json=body, headers={"session-id": "ours"})
    assert response.headers.get_list("x-session-id") == ["ours"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_refusal_is_recorded_beside_the_message(stack: Stack, stream: bool) -> None:
    stack.upstream.push(reply.refusal("I can't help with that."))
    with stack.http() as http:
        body = {"model": "m", "messages": [user("bad idea")], "stream": stream}
        assert http.post("/v1/chat/completions", json=body, headers={"session-id": "no"}).status_code == 200
        stored = http.get("/v1/sessions/no/messages").json()["data"][-1]
    assert stored["role"] == "assistant"
    assert stored["refusal"] == "I can't help with that."


def test_a_turn_whose_session_was_deleted_while_it_ran_says_it_was_not_recorded(stack: Stack) -> None:
    release = threading.Event()
    with stack.http() as http:
        http.post(
            "/v1/chat/completions", json={"model": "m", "messages": [user("first")]}, headers={"session-id": "gone"}
        )
        stack.upstream.push(reply.hold(release))
        answers: list[Any] = []

        def second_turn() -> None:
            with stack.http() as other:
                body = {"model": "m", "messages": [user("second")]}
                answers.append(other.post("/v1/chat/completions", json=body, headers={"session-id": "gone"}))

        running = threading.Thread(target=second_turn)
        running.start()
        stack.upstream.wait_for_requests(2)
        assert http.delete("/v1/sessions/gone").status_code == 200
        release.set()
        running.join(timeout=10)
    assert answers[0].status_code == 200
    assert answers[0].headers["x-session-recorded"] == "false"
    with stack.http() as http:
        assert http.get("/v1/sessions/gone").status_code == 404  # not resurrected by the turn
