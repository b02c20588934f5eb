"""``--upstream mock://`` end to end: the real SDKs -> the proxy under uvicorn -> its built-in mock upstream.

In a session the second turn's reply says it saw 3 messages (user, assistant, user): the history
was spliced, in every dialect, streamed or not. And the real command starts and answers curl-like
requests.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import ollama
import openai
import pytest
from google import genai
from google.genai import types

from harness.proxy_process import clean_environ, proxy_process
from harness.servers import serve
from statefulproxy import ProxyApp, settings_from_mapping

KEY = "mock-e2e-key"
SIMPLE = "/api/v1/chat"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = settings_from_mapping(
        {"upstream": "mock://", "store": "memory://", "simple_chat_prefix": SIMPLE}, source="test"
    )
    with serve(ProxyApp(settings), loop="uvloop") as running:
        yield running


@pytest.fixture
def closing() -> Iterator[contextlib.ExitStack]:
    """Closes the SDK clients a test opens (an unclosed connection is a ResourceWarning, an error here)."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def session_id() -> str:
    return f"mock-{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_second_turn_saw_three_messages(
    url: str, closing: contextlib.ExitStack, session_id: str, stream: bool
) -> None:
    headers = {"session-id": session_id}
    client = closing.enter_context(
        openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, default_headers=headers)
    )
    replies = []
    for text in ("My name is Ada.", "What is my name?"):
        messages: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": text}]
        if stream:
            chunks = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
            replies.append("".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices))
        else:
            completion = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
            replies.append(completion.choices[0].message.content)
    assert replies == [
        "You said: My name is Ada. (saw 1 message)",
        "You said: What is my name? (saw 3 messages)",
    ]


def test_openai_store_true_mints_a_session(url: str, closing: contextlib.ExitStack) -> None:
    client = closing.enter_context(openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0))
    first = client.chat.completions.create(model="m", store=True, messages=[{"role": "user", "content": "one"}])
    assert first.metadata is not None
    session_id = first.metadata["session_id"]
    again = client.chat.completions.create(
        model="m", metadata={"session_id": session_id}, messages=[{"role": "user", "content": "two"}]
    )
    assert again.choices[0].message.content == "You said: two (saw 3 messages)"


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_second_turn_saw_three_messages(
    url: str, closing: contextlib.ExitStack, session_id: str, stream: bool
) -> None:
    headers = {"session-id": session_id}
    client = closing.enter_context(
        anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0, default_headers=headers)
    )
    replies = []
    for text in ("My name is Ada.", "What is my name?"):
        messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": text}]
        if stream:
            with client.messages.stream(model="claude-x", max_tokens=64, system="be brief", messages=messages) as s:
                replies.append(s.get_final_text())
        else:
            message = client.messages.create(model="claude-x", max_tokens=64, system="be brief", messages=messages)
            block = message.content[0]
            assert block.type == "text"
            replies.append(block.text)
    assert replies[1] == "You said: What is my name? (saw 3 messages)"


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_sdk_second_turn_saw_three_messages(
    url: str, closing: contextlib.ExitStack, session_id: str, stream: bool
) -> None:
    options = types.HttpOptions(base_url=url, headers={"session-id": session_id})
    client = closing.enter_context(genai.Client(api_key=KEY, http_options=options))
    replies = []
    for text in ("My name is Ada.", "What is my name?"):
        if stream:
            chunks = client.models.generate_content_stream(model="gemini-2.5-flash", contents=text)
            replies.append("".join(chunk.text or "" for chunk in chunks))
        else:
            replies.append(client.models.generate_content(model="gemini-2.5-flash", contents=text).text)
    assert replies[1] == "You said: What is my name? (saw 3 messages)"


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_client_second_turn_saw_three_messages(
    url: str, closing: contextlib.ExitStack, session_id: str, stream: bool
) -> None:
    headers = {"authorization": f"Bearer {KEY}", "session-id": session_id}
    client = closing.enter_context(ollama.Client(host=url, headers=headers))
    replies = []
    for text in ("My name is Ada.", "What is my name?"):
        messages = [{"role": "user", "content": text}]
        if stream:
            replies.append(
                "".join(part.message.content or "" for part in client.chat("llama3.2", messages, stream=True))
            )
        else:
            replies.append(client.chat("llama3.2", messages, stream=False).message.content)
    assert replies[1] == "You said: What is my name? (saw 3 messages)"


def test_one_session_across_dialects(url: str, session_id: str) -> None:
    headers = {"authorization": f"Bearer {KEY}", "session-id": session_id}
    with httpx2.Client(base_url=url, headers=headers, timeout=10) as http:
        body = {"model": "m", "messages": [{"role": "user", "content": "one"}]}
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        body = {"model": "c", "max_tokens": 9, "messages": [{"role": "user", "content": "two"}]}
        answer = http.post("/v1/messages", json=body)
        assert answer.json()["content"][0]["text"] == "You said: two (saw 3 messages)"
        body = {"contents": [{"role": "user", "parts": [{"text": "three"}]}]}
        answer = http.post("/v1beta/models/g:streamGenerateContent", params={"alt": "sse"}, json=body)
        assert answer.headers["content-type"].startswith("text/event-stream")
        frames = [json.loads(line[len("data: ") :]) for line in answer.text.splitlines() if line.startswith("data: ")]
        text = "".join(frame["candidates"][0]["content"]["parts"][0]["text"] for frame in frames)
        assert text == "You said: three (saw 5 messages)"


def test_simple_chat_goes_through_the_openai_dialect(url: str, session_id: str) -> None:
    with httpx2.Client(base_url=url + SIMPLE, headers={"authorization": f"Bearer {KEY}"}, timeout=10) as http:
        first = http.post("/completions", json={"message": "Hi, I am Ada", "sessionId": session_id})
        second = http.post("/completions", json={"message": "Who am I?", "sessionId": session_id})
    assert first.json() == {"success": True, "data": "You said: Hi, I am Ada (saw 1 message)"}
    assert second.json() == {"success": True, "data": "You said: Who am I? (saw 3 messages)"}


def test_other_paths_are_a_404_from_the_mock(url: str) -> None:
    response = httpx2.get(url + "/v1/embeddings", headers={"authorization": f"Bearer {KEY}"}, timeout=10)
    assert response.status_code == 404
    assert "statefulproxy-mock" in response.headers["server"]  # relayed as the upstream sent it
    assert "mock upstream answers chat requests only" in response.json()["error"]["message"]
    models = httpx2.get(url + "/v1/models", timeout=10).json()
    assert [model["id"] for model in models["data"]] == ["mock"]


def test_a_bad_mock_url_is_a_config_error() -> None:
    from statefulproxy.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^upstream: must be mock:// with nothing after it"):
        settings_from_mapping({"upstream": "mock://other"}, source="test")
    routed = settings_from_mapping({"routes": [{"prefix": "/a", "upstream": "mock://"}]}, source="test")
    assert routed.route_table[0].upstream == "mock://"


def test_the_command_serves_the_mock() -> None:
    with proxy_process(["--upstream", "mock://"], clean_environ()) as (base, _proxy):
        # what the README's curl lines send, with no key in $OPENAI_API_KEY
        headers, _ = post(base, {"model": "gpt-4o-mini", "store": True, "messages": [user("My name is Ada.")]})
        session_id = headers["x-session-id"]
        _, second = post(base, {"model": "gpt-4o-mini", "messages": [user("What is my name?")]}, session_id)
        assert second["choices"][0]["message"]["content"] == "You said: What is my name? (saw 3 messages)"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def post(base: str, body: object, session_id: str | None = None) -> tuple[dict[str, str], Any]:
    headers = {"authorization": "Bearer ", "content-type": "application/json"}
    if session_id is not None:
        headers["session-id"] = session_id
    request = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return dict(response.headers), json.loads(response.read())
