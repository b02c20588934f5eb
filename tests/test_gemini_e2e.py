"""Gemini generateContent sessions end to end: the google-genai SDK and raw httpx2 -> the proxy under uvicorn -> a
scripted upstream, over both stores (CONTRACT.md sections 3 and 4)."""

from __future__ import annotations

import base64
import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest
from google import genai
from google.genai import errors, types

from harness import upstream as reply
from harness.stack import Stack, running_stack, store_url_for
from harness.upstream import RecordedRequest

KEY = "gemini-e2e-key"
MODEL = "gemini-2.5-flash"
GENERATE = f"/v1beta/models/{MODEL}:generateContent"
STREAM = f"/v1beta/models/{MODEL}:streamGenerateContent"
# standard base64 with '+', '/' and padding: it must come back exactly so
SIGNATURE = base64.b64encode(bytes(range(200, 256)) + b"\xfb\xff\x00").decode()
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="weather of a city",
    parameters=types.Schema(type=types.Type.OBJECT, properties={"city": types.Schema(type=types.Type.STRING)}),
)
TOOL_CONFIG = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])])


@pytest.fixture(scope="module", params=["memory", "redis"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    with running_stack(store_url_for(request.param, redis_url)) as running:
        yield running


@pytest.fixture(autouse=True)
def every_scripted_reply_is_played(stack: Stack) -> Iterator[None]:
    yield
    assert stack.upstream.pending == 0, "a scripted reply was never asked for"


@pytest.fixture
def session_id() -> str:
    return f"gem-{uuid.uuid4().hex[:12]}"


def sdk(stack: Stack, session_id: str) -> genai.Client:
    options = types.HttpOptions(base_url=stack.url, headers={"session-id": session_id})
    return genai.Client(api_key=KEY, http_options=options)


def http(stack: Stack, session_id: str | None = None) -> httpx2.Client:
    headers = {"x-goog-api-key": KEY}
    if session_id:
        headers["session-id"] = session_id
    return httpx2.Client(base_url=stack.url, headers=headers, timeout=10)


def canonical_history(stack: Stack, session_id: str) -> list[dict[str, Any]]:
    with http(stack) as management:
        response = management.get(f"/v1/sessions/{session_id}/messages", params={"limit": 100})
    assert response.status_code == 200, response.text
    skip = ("id", "object", "created_at")
    return [{key: value for key, value in message.items() if key not in skip} for message in response.json()["data"]]


def message_count(stack: Stack, session_id: str) -> int | None:
    with http(stack) as management:
        response = management.get(f"/v1/sessions/{session_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    count: int = response.json()["message_count"]
    return count


def upstream_requests(stack: Stack, before: int) -> list[RecordedRequest]:
    return [request for request in stack.upstream.received[before:] if "/models/" in request.path]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "parts": [{"text": text}]}


def model(text: str) -> dict[str, Any]:
    return {"role": "model", "parts": [{"text": text}]}


def assert_well_formed(contents: list[dict[str, Any]]) -> None:
    """What generateContent demands: user first and last, user/model alternating, no empty parts, and each
    model content's functionCalls answered by functionResponses of the same names at the start of the next."""
    roles = [content.get("role", "user") for content in contents]
    assert roles[0] == "user", roles
    assert roles[-1] == "user", roles
    assert all(a != b for a, b in itertools.pairwise(roles)), roles
    called: list[str] = []
    for content, role in zip(contents, roles, strict=True):
        parts = content["parts"]
        assert parts, content
        if role == "model":
            assert not any("functionResponse" in part for part in parts)
            called = sorted(part["functionCall"]["name"] for part in parts if "functionCall" in part)
            continue
        answered = [part["functionResponse"]["name"] for part in parts if "functionResponse" in part]
        assert sorted(answered) == called, (called, content)
        assert all("functionResponse" in part for part in parts[: len(answered)]), parts
        called = []


def test_multi_turn_over_generate_sse_and_json_array_streams(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    stack.upstream.push(reply.text("Guten Tag!"), path=":generateContent")
    stack.upstream.push(
        reply.text("Wie geht's?", chunk_size=3), reply.text("Gut."), reply.text("Ja."), path=":streamGenerateContent"
    )
    with sdk(stack, session_id) as client:
        first = client.models.generate_content(
            model=MODEL, contents="hallo", config=types.GenerateContentConfig(system_instruction="speak German")
        )
        assert first.text == "Guten Tag!"
        assert first.sdk_http_response is not None
        assert first.sdk_http_response.headers is not None
        assert first.sdk_http_response.headers["x-session-id"] == session_id
        chunks = list(client.models.generate_content_stream(model=MODEL, contents="und?"))
        assert "".join(chunk.text or "" for chunk in chunks) == "Wie geht's?"
        assert chunks[-1].candidates is not None
        assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    with http(stack, session_id) as raw:
        array = raw.post(STREAM, json={"contents": [user("gut?")]})
        assert array.headers["content-type"].startswith("application/json")
        assert array.headers["x-session-id"] == session_id
        elements = array.json()
        assert isinstance(elements, list)
        assert elements[-1]["candidates"][0]["finishReason"] == "STOP"
        assert "".join(part["text"] for e in elements for part in e["candidates"][0]["content"]["parts"]) == "Gut."
        instruction = {"parts": [{"text": "speak English"}]}
        raw.post(STREAM, params={"alt": "sse"}, json={"contents": [user("english?")], "systemInstruction": instruction})
    sent = [request for request in upstream_requests(stack, before)]
    assert [request.query_string for request in sent] == [b"", b"alt=sse", b"", b"alt=sse"]
    first_sent, second, third, fourth = (request.json for request in sent)
    german = {"parts": [{"text": "speak German"}], "role": "user"}
    assert first_sent["systemInstruction"] == german
    assert second["systemInstruction"] == german  # omitted: the stored one
    assert second["contents"] == [user("hallo"), model("Guten Tag!"), user("und?")]
    assert third["contents"] == [*second["contents"], model("Wie geht's?"), user("gut?")]
    assert third["systemInstruction"] == german
    assert fourth["systemInstruction"] == instruction  # a new one replaces it
    assert fourth["contents"] == [*third["contents"], model("Gut."), user("english?")]
    for request in (first_sent, second, third, fourth):
        assert_well_formed(request["contents"])
    history = canonical_history(stack, session_id)
    assert history[0] == {"role": "system", "content": "speak English"}
    assert [message["content"] for message in history[1:]] == [
        "hallo",
        "Guten Tag!",
        "und?",
        "Wie geht's?",
        "gut?",
        "Gut.",
        "english?",
        "Ja.",
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
def test_function_call_thought_signature_is_replayed_exactly(stack: Stack, session_id: str, stream: bool) -> None:
    before = len(stack.upstream.received)
    scripted = reply.tool_calls(
        [("unused", "get_weather", '{"city": "Zürich"}')],
        "Let me look.",
        reasoning="Need the tool for Zürich.",
        thought_signature=SIGNATURE,
        chunk_size=5,
    )
    stack.upstream.push(scripted, reply.text("12 °C in Zürich."), reply.text("Bye."), path="Content")
    with sdk(stack, session_id) as client:
        calls: list[types.FunctionCall] | None
        if stream:
            chunks = list(client.models.generate_content_stream(model=MODEL, contents="Zürich?", config=TOOL_CONFIG))
            calls = [call for chunk in chunks for call in chunk.function_calls or []]
        else:
            calls = client.models.generate_content(model=MODEL, contents="Zürich?", config=TOOL_CONFIG).function_calls
        assert calls is not None
        assert [(call.name, call.args) for call in calls] == [("get_weather", {"city": "Zürich"})]
        result = types.Part.from_function_response(name="get_weather", response={"celsius": 12})
        client.models.generate_content(
            model=MODEL, contents=[types.Content(role="user", parts=[result])], config=TOOL_CONFIG
        )
        client.models.generate_content(model=MODEL, contents="thanks", config=TOOL_CONFIG)
    _, answered, thanked = upstream_requests(stack, before)
    # the parts the upstream produced, as its non-streamed body carries them
    produced = [
        {"text": "Need the tool for Zürich.", "thought": True},
        {"text": "Let me look."},
        {"functionCall": {"name": "get_weather", "args": {"city": "Zürich"}}, "thoughtSignature": SIGNATURE},
    ]
    response = {"functionResponse": {"name": "get_weather", "response": {"celsius": 12}}}
    assert answered.json["contents"][:2] == [user("Zürich?"), {"role": "model", "parts": produced}]
    assert answered.json["contents"][2]["parts"] == [response]
    assert orjson.dumps(produced) in answered.body  # byte-equal, signature and key order included
    assert orjson.dumps(produced) in thanked.body
    assert thanked.json["contents"][2:] == [
        {"role": "user", "parts": [response]},
        model("12 °C in Zürich."),
        user("thanks"),
    ]
    for request in (answered, thanked):
        assert_well_formed(request.json["contents"])
    history = canonical_history(stack, session_id)
    assert history[1] == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Zürich"}'}}
        ],
        "reasoning": "Need the tool for Zürich.",
    }
    assert history[2] == {"role": "tool", "tool_call_id": "call_0", "content": '{"celsius":12}'}
    assert SIGNATURE not in json.dumps(history)


def test_an_sdk_chat_resending_its_history_is_not_duplicated(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    called = reply.tool_calls([("unused", "get_weather", '{"city": "Oslo"}')], thought_signature=SIGNATURE)
    stack.upstream.push(called, reply.text("Cold."), reply.text("A coat."), path=":generateContent")
    with sdk(stack, session_id) as client:
        chat = client.chats.create(model=MODEL, config=TOOL_CONFIG)
        first = chat.send_message("Oslo?")
        assert first.function_calls is not None
        chat.send_message(types.Part.from_function_response(name="get_weather", response={"celsius": -3}))
        chat.send_message("what to wear?")
    last = upstream_requests(stack, before)[-1].json["contents"]
    assert_well_formed(last)
    assert [content["role"] for content in last] == ["user", "model", "user", "model", "user"]
    assert orjson.dumps(last).count(b"Oslo?") == 1
    history = canonical_history(stack, session_id)
    assert [message["role"] for message in history] == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert [message["content"] for message in history if message["role"] == "user"] == ["Oslo?", "what to wear?"]


def test_proxy_errors_raise_the_sdk_client_error(stack: Stack) -> None:
    before = len(stack.upstream.received)
    with http(stack) as management:
        limited = management.post("/v1/sessions", json={"rate_limits": {"max_requests_per_1_minute": 1}}).json()["id"]
        ended = management.post("/v1/sessions", json={}).json()["id"]
        assert management.post(f"/v1/sessions/{ended}/end").status_code == 200
    for target, code, status in [("sess_" + "2" * 32, 404, "NOT_FOUND"), (ended, 409, "ABORTED")]:
        with sdk(stack, target) as client, pytest.raises(errors.ClientError) as caught:
            client.models.generate_content(model=MODEL, contents="x")
        assert caught.value.code == code
        assert caught.value.status == status
        assert set(caught.value.details["error"]) == {"code", "message", "status"}
    assert upstream_requests(stack, before) == []
    with sdk(stack, limited) as client:
        client.models.generate_content(model=MODEL, contents="x")
        with pytest.raises(errors.ClientError) as limit:
            list(client.models.generate_content_stream(model=MODEL, contents="y"))
    assert limit.value.code == 429
    assert limit.value.status == "RESOURCE_EXHAUSTED"
    assert len(upstream_requests(stack, before)) == 1
    assert message_count(stack, limited) == 2


FAILURES: dict[str, tuple[reply.Reply, str]] = {
    "inband_error_sse": (reply.inband_error(after_chunks=2), "alt=sse"),
    "inband_error_array": (reply.inband_error(after_chunks=2), ""),
    "cut_sse": (reply.cut(after_chunks=2), "alt=sse"),
    "cut_array": (reply.cut(after_chunks=2), ""),
    "no_finish_reason": (reply.no_done(), ""),
    "status_503": (reply.error(503), "alt=sse"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failed_stream_records_nothing(stack: Stack, session_id: str, failure: str) -> None:
    before = len(stack.upstream.received)
    scripted, query = FAILURES[failure]
    stack.upstream.push(reply.text("kept"), scripted, scripted, path="Content")
    with http(stack, session_id) as raw:
        raw.post(GENERATE, json={"contents": [user("one")]})
    assert message_count(stack, session_id) == 2
    for target in (session_id, f"{session_id}-new"):
        with http(stack, target) as raw:
            try:
                response = raw.post(f"{STREAM}?{query}", json={"contents": [user("two")]})
            except httpx2.RemoteProtocolError:
                assert failure.startswith("cut")  # the proxy cuts the client too
            else:
                assert not failure.startswith("cut")
                if failure == "inband_error_array":
                    assert response.json()[-1]["error"]["status"] == "INTERNAL"
                if failure == "status_503":
                    assert response.status_code == 503
    assert len(upstream_requests(stack, before)) == 3
    assert canonical_history(stack, session_id) == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "kept"},
    ]
    assert message_count(stack, f"{session_id}-new") is None


@pytest.mark.parametrize("form", ["generate", "sse", "array"])
def test_a_repeated_idempotency_key_gets_the_recorded_reply(stack: Stack, session_id: str, form: str) -> None:
    before = len(stack.upstream.received)
    scripted = reply.tool_calls(
        [("unused", "get_weather", '{"city": "Kyiv"}')], "Checking.", thought_signature=SIGNATURE
    )
    stack.upstream.push(scripted, path="Content")
    path = GENERATE if form == "generate" else STREAM
    query = "?alt=sse" if form == "sse" else ""
    body = {"contents": [user("Kyiv?")]}
    with http(stack, session_id) as raw:
        responses = [
            raw.post(f"{path}{query}", json=body, headers={"idempotency-key": f"idem-{session_id}"}) for _ in range(2)
        ]
    first, second = responses
    assert "x-session-replayed" not in first.headers
    assert second.headers["x-session-replayed"] == "true"
    expected_type = "text/event-stream" if form == "sse" else "application/json"
    assert second.headers["content-type"].startswith(expected_type)

    def parts_of(response: httpx2.Response) -> list[dict[str, Any]]:
        if form == "sse":
            lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
            elements = [json.loads(line[len("data: ") :]) for line in lines]
        else:
            elements = response.json() if form == "array" else [response.json()]
        assert elements[-1]["candidates"][0]["finishReason"] == "STOP"
        return [part for element in elements for part in element["candidates"][0]["content"]["parts"]]

    signed = [part for part in parts_of(second) if "thoughtSignature" in part]
    assert signed == [
        {"functionCall": {"name": "get_weather", "args": {"city": "Kyiv"}}, "thoughtSignature": SIGNATURE}
    ]
    assert "".join(part.get("text", "") for part in parts_of(second)) == "Checking."
    assert parts_of(first) != []
    assert len(upstream_requests(stack, before)) == 1
    assert message_count(stack, session_id) == 2


def test_the_sdk_parses_a_recorded_reply(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    scripted = reply.tool_calls([("unused", "get_weather", '{"city": "Riga"}')], "Hm.", thought_signature=SIGNATURE)
    stack.upstream.push(scripted, path=":generateContent")
    options = types.HttpOptions(
        base_url=stack.url, headers={"session-id": session_id, "idempotency-key": f"idem-{session_id}"}
    )
    with genai.Client(api_key=KEY, http_options=options) as client:
        first, second = (client.models.generate_content(model=MODEL, contents="Riga?") for _ in range(2))
    for answer in (first, second):
        assert answer.text == "Hm."
        assert answer.function_calls is not None
        assert answer.function_calls[0].args == {"city": "Riga"}
        parts = answer.candidates[0].content.parts if answer.candidates and answer.candidates[0].content else None
        assert parts is not None
        assert [part.thought_signature for part in parts if part.thought_signature] == [base64.b64decode(SIGNATURE)]
    assert second.sdk_http_response is not None
    assert second.sdk_http_response.headers is not None
    assert second.sdk_http_response.headers["x-session-replayed"] == "true"
    assert len(upstream_requests(stack, before)) == 1


def test_parallel_calls_of_one_function_are_answered_in_order(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    calls = [("unused", "get_weather", '{"city": "Paris"}'), ("unused", "get_weather", '{"city": "Oslo"}')]
    stack.upstream.push(reply.tool_calls(calls), reply.text("Mild and cold."), reply.text("Ok."), path="Content")
    with http(stack, session_id) as raw:
        called = raw.post(f"{STREAM}?alt=sse", json={"contents": [user("two cities?")]})
        assert called.status_code == 200
        responses = [
            {"functionResponse": {"name": "get_weather", "response": {"celsius": degrees}}} for degrees in (15, -3)
        ]
        raw.post(GENERATE, json={"contents": [{"role": "user", "parts": responses}]})
        raw.post(GENERATE, json={"contents": [user("so?")]})
    thanked = upstream_requests(stack, before)[-1].json["contents"]
    assert thanked[1] == {
        "role": "model",
        "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
        ],
    }
    assert thanked[2] == {"role": "user", "parts": responses}
    assert_well_formed(thanked)
    history = canonical_history(stack, session_id)
    assert [call["id"] for call in history[1]["tool_calls"]] == ["call_0", "call_1"]
    assert history[2:4] == [
        {"role": "tool", "tool_call_id": "call_0", "content": '{"celsius":15}'},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius":-3}'},
    ]


def test_the_key_query_parameter_is_the_same_credential(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    stack.upstream.push(reply.text("first"), reply.text("second"), reply.text("stranger"), path="Content")
    with sdk(stack, session_id) as client:
        client.models.generate_content(model=MODEL, contents="one")
    vertex = f"/v1/projects/p/locations/us-central1/publishers/google/models/{MODEL}:generateContent"
    with httpx2.Client(base_url=stack.url, headers={"session-id": session_id}, timeout=10) as raw:
        same = raw.post(GENERATE, params={"key": KEY}, json={"contents": [user("two")]})
        other = raw.post(vertex, params={"key": "another-key"}, json={"contents": [user("who?")]})
    assert same.status_code == other.status_code == 200
    _, second, third = upstream_requests(stack, before)
    assert second.json["contents"] == [user("one"), model("first"), user("two")]
    assert b"key=" + KEY.encode() in second.query_string  # forwarded: the upstream needs it
    assert third.path == vertex
    assert third.json["contents"] == [user("who?")]  # another credential: another session of that id
    assert message_count(stack, session_id) == 4


def test_store_false_splices_history_but_records_nothing(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    stack.upstream.push(reply.text("kept"), reply.text("not kept"), path="Content")
    with http(stack, session_id) as raw:
        raw.post(GENERATE, json={"contents": [user("one")]})
        raw.post(f"{STREAM}?alt=sse", json={"contents": [user("what if")], "store": False})
    peeked = upstream_requests(stack, before)[-1].json
    assert peeked["contents"] == [user("one"), model("kept"), user("what if")]
    assert "store" not in peeked
    assert message_count(stack, session_id) == 2


def test_a_streamed_sdk_chat_is_not_duplicated(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    first = reply.text("Bonjour, ça va?", reasoning="French it is.", thought_signature=SIGNATURE, chunk_size=3)
    replies = [first, reply.text("Très bien.", chunk_size=3), reply.text("Au revoir.")]
    stack.upstream.push(*replies, path=":streamGenerateContent")
    stack.upstream.push(reply.text("De rien."), path=":generateContent")
    with sdk(stack, session_id) as client:
        chat = client.chats.create(model=MODEL, config=types.GenerateContentConfig(system_instruction="French only"))
        for text in ("salut", "et toi?", "bye"):
            "".join(chunk.text or "" for chunk in chat.send_message_stream(text))
    # the chat resends its history, each streamed chunk a model content of its own: forwarded as it sent it
    chatted = upstream_requests(stack, before)[-1]
    assert chatted.body.count(b"salut") == 1
    assert chatted.body.count(b"French only") == 1
    history = canonical_history(stack, session_id)
    assert [message["role"] for message in history] == ["system"] + ["user", "assistant"] * 3
    assert [message["content"] for message in history[1:]] == [
        "salut",
        "Bonjour, ça va?",
        "et toi?",
        "Très bien.",
        "bye",
        "Au revoir.",
    ]
    # a resumed turn gets the history laid out by the proxy: one model content per turn, the signature kept
    with http(stack, session_id) as raw:
        raw.post(GENERATE, json={"contents": [user("merci")]})
    resumed = upstream_requests(stack, before)[-1].json
    assert_well_formed(resumed["contents"])
    assert [content["role"] for content in resumed["contents"]] == ["user", "model"] * 3 + ["user"]
    assert resumed["contents"][1]["parts"] == [
        {"text": "French it is.", "thought": True},
        {"text": "Bonjour, ça "},
        {"text": "va?", "thoughtSignature": SIGNATURE},
    ]
    assert resumed["systemInstruction"]["parts"] == [{"text": "French only"}]
