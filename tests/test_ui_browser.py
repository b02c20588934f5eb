"""The session browser and the chat widget in headless Chromium (issue 13).

A real proxy process (``python -m statefulproxy``) in front of the scripted upstream, the example
page of ``examples/widget`` on a second loopback port (another origin, allowed by
``cors_origins``), and Debian's ``chromium`` driven by Playwright. Each main screen is saved under
``tests/artifacts/ui/``; with ``STATEFULPROXY_UPDATE_SCREENSHOTS=1`` also under ``docs/screenshots/``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from harness import upstream as reply
from harness.proxy_process import READY_LINE, ProxyProcess, clean_environ, free_port
from harness.servers import serve
from harness.upstream import ScriptedUpstream

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
CHROMIUM = os.environ.get("STATEFULPROXY_CHROMIUM", "/usr/bin/chromium")
# .ci/run installs Chromium and sets STATEFULPROXY_REQUIRE_BROWSER: there a missing browser fails, not skips
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK) and not os.environ.get("STATEFULPROXY_REQUIRE_BROWSER"),
    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)",
)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts" / "ui"
UPSTREAM_KEY = "sk-upstream-held-by-the-proxy"
WIDGET_OWNER = "sk-widget-site-backend"
TIMEOUT_MS = 10_000
README_SCREENS = {"sign-in", "sessions", "transcript", "transcript-dark", "phone", "composer-streaming", "widget"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[ScriptedUpstream, str]]:
    scripted = ScriptedUpstream()
    with serve(scripted, loop="uvloop") as url:
        yield scripted, url


@pytest.fixture(scope="module")
def sites(upstream: tuple[ScriptedUpstream, str]) -> Iterator[tuple[str, str]]:
    """(the proxy's URL, the example page's URL): two origins, the page's allowed by cors_origins."""
    proxy_url = f"http://127.0.0.1:{free_port()}"
    spec = importlib.util.spec_from_file_location("widget_example", ROOT / "examples" / "widget" / "app.py")
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with serve(example.create_app(proxy_url, WIDGET_OWNER)) as page_url:
        env = clean_environ(STATEFULPROXY_CORS_ORIGINS=page_url, STATEFULPROXY_UPSTREAM_API_KEY=UPSTREAM_KEY)
        proxy = ProxyProcess(["--upstream", upstream[1], "--port", proxy_url.rsplit(":", 1)[1]], env)
        try:
            proxy.wait_for(READY_LINE)
            yield proxy_url, page_url
        finally:
            proxy.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh tab (its own sessionStorage); any script error or policy violation fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    tab.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    yield tab
    context.close()
    expected = [problem for problem in problems if "404" not in problem]  # a session of another key
    assert expected == [], expected


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS.parent / ".gitignore").write_text("*\n")  # artifacts are never committed
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), animations="disabled")  # transitions finished, not caught halfway
    if name in README_SCREENS and os.environ.get("STATEFULPROXY_UPDATE_SCREENSHOTS"):
        (ROOT / "docs" / "screenshots").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, ROOT / "docs" / "screenshots" / path.name)


def owner() -> str:
    return f"sk-test-{uuid.uuid4().hex[:12]}"


def chat(http: httpx2.Client, session_id: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    response = http.post(
        "/v1/chat/completions", json={"model": "m", "messages": messages}, headers={"session-id": session_id}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def sign_in(page: Any, proxy_url: str, key: str) -> None:
    page.goto(f"{proxy_url}/ui/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.locator(".topbar").wait_for()


def rows(page: Any) -> list[str]:
    return [title.strip() for title in page.locator(".row .row-title").all_inner_texts()]


def wait_rows(page: Any, titles: list[str]) -> None:
    """Until the list shows exactly ``titles``, in order."""
    page.wait_for_function(
        "titles => JSON.stringify([...document.querySelectorAll('.row .row-title')].map(e => e.textContent)) "
        "=== JSON.stringify(titles)",
        arg=titles,
    )


WEATHER = '{"city":"Paris","unit":"celsius"}'
FORECAST = '{"forecast":"showers","high":19}'


def seed_three(scripted: ScriptedUpstream, http: httpx2.Client) -> str:
    """A billing question, a trip with a tool call, an ended onboarding; the trip's id."""
    chat(http, "billing-1", [{"role": "user", "content": "Why was I charged twice?"}])
    http.post("/v1/sessions/billing-1", json={"title": "Billing: double charge", "metadata": {"team": "billing"}})
    scripted.push(reply.tool_calls([("call_w1", "get_weather", WEATHER)], reasoning="Look the forecast up first."))
    ask = {"role": "user", "content": "Will it rain in Paris tomorrow?"}
    first = chat(http, "trip-1", [ask])["choices"][0]["message"]
    called = {"role": "assistant", "content": None, "tool_calls": first["tool_calls"]}
    scripted.push(reply.text("Showers in the afternoon: take an umbrella."))
    chat(http, "trip-1", [ask, called, {"role": "tool", "tool_call_id": "call_w1", "content": FORECAST}])
    http.post("/v1/sessions/trip-1", json={"title": "Trip planner: Paris"})
    onboarding = http.post("/v1/sessions", json={"title": "Onboarding checklist"}).json()["id"]
    http.post(f"/v1/sessions/{onboarding}/end")
    return "trip-1"


def test_sign_in_list_search_read_a_tool_call_and_fork_at_a_message(
    page: Any, sites: tuple[str, str], upstream: tuple[ScriptedUpstream, str]
) -> None:
    proxy_url, _ = sites
    key = owner()
    with httpx2.Client(base_url=proxy_url, headers={"authorization": f"Bearer {key}"}, timeout=10) as http:
        trip = seed_three(upstream[0], http)
        page.goto(f"{proxy_url}/ui/")
        page.get_by_label("API key").wait_for()
        screenshot(page, "sign-in")
        assert key not in page.url
        sign_in(page, proxy_url, key)
        assert page.evaluate("sessionStorage.getItem('statefulproxy.key')") == key
        everything = ["Onboarding checklist", "Trip planner: Paris", "Billing: double charge"]
        wait_rows(page, everything)  # newest first
        assert "Ended" in page.locator(".row").first.inner_text()
        screenshot(page, "sessions")

        page.keyboard.press("/")
        assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Search sessions"
        page.keyboard.type("BILLING")
        wait_rows(page, ["Billing: double charge"])
        search = page.get_by_label("Search sessions")
        search.fill("team:nobody")
        search.press("Enter")
        page.locator(".empty-title", has_text="No sessions match").wait_for()
        search.fill("team:billing")
        search.press("Enter")
        wait_rows(page, ["Billing: double charge"])
        search.fill("")
        search.press("Enter")
        wait_rows(page, everything)
        page.get_by_role("button", name="Ended", exact=True).click()
        wait_rows(page, ["Onboarding checklist"])
        page.get_by_role("button", name="All", exact=True).click()
        wait_rows(page, everything)

        page.locator(".row", has_text="Trip planner").click()
        tool = page.locator(".tool").first
        tool.wait_for()
        assert page.url.endswith(f"#/s/{trip}")
        assert tool.locator(".tool-name").inner_text() == "get_weather"
        assert tool.locator(".tool-status").inner_text() == "result"  # the result is paired with its call
        assert page.locator(".msg-tool").count() == 0  # not shown a second time on its own
        assert tool.get_attribute("open") is None
        tool.locator("summary").click()
        arguments, result = tool.locator("pre.json").all_inner_texts()
        assert json.loads(arguments) == json.loads(WEATHER)
        assert "\n  " in arguments
        assert json.loads(result) == json.loads(FORECAST)
        thinking = page.locator(".reasoning").first
        assert thinking.get_attribute("open") is None
        assert not thinking.locator("pre").is_visible()
        thinking.locator("summary").click()
        assert thinking.locator("pre").inner_text() == "Look the forecast up first."
        roles = page.locator(".msg .role").all_inner_texts()
        assert [role.lower() for role in roles] == ["user", "assistant", "assistant"]
        screenshot(page, "transcript")
        page.emulate_media(color_scheme="dark")
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(13, 14, 18)"
        screenshot(page, "transcript-dark")
        page.emulate_media(color_scheme="light")
        page.set_viewport_size({"width": 390, "height": 844})
        assert not page.locator(".sidebar").is_visible()
        assert page.get_by_label("All sessions").is_visible()
        screenshot(page, "phone")
        page.set_viewport_size({"width": 1280, "height": 800})

        history = http.get(f"/v1/sessions/{trip}/messages?include=reply_details").json()["data"]
        assert history[1]["dialect"] == "openai"  # each reply shows the dialect of its turn, and its usage
        assert page.locator(".msg-assistant .tag-dialect").first.is_visible()
        if "usage" in history[1]:
            assert page.locator(".msg-assistant .usage").first.is_visible()
        called = page.locator(".msg-assistant").first
        called.hover()
        called.get_by_role("button", name="Fork from here", exact=True).click()
        page.wait_for_url(re.compile(r".*#/s/sess_[A-Za-z0-9]+$"))
        forked = page.url.rsplit("/", 1)[1]
        page.locator(".session-title", has_text="Trip planner: Paris").wait_for()
        page.locator(".msg").nth(1).wait_for()
        assert page.locator(".msg").count() == 2
        copied = http.get(f"/v1/sessions/{forked}/messages").json()["data"]
        assert [message["id"] for message in copied] == [message["id"] for message in history[:2]]
        assert page.locator(".row").first.get_attribute("aria-current") == "true"  # listed, on top, selected
        screenshot(page, "forked")


def test_the_composer_sends_a_turn_and_the_reply_streams_in(
    page: Any, sites: tuple[str, str], upstream: tuple[ScriptedUpstream, str]
) -> None:
    proxy_url, _ = sites
    scripted = upstream[0]
    key = owner()
    with httpx2.Client(base_url=proxy_url, headers={"authorization": f"Bearer {key}"}, timeout=10) as http:
        scripted.push(reply.text("Bytes cross the bridge, / each word kept on the far side, / the loop remembers."))
        first = chat(http, "compose-1", [{"role": "user", "content": "Draft a haiku about proxies."}])
        sign_in(page, proxy_url, key)
        page.goto(f"{proxy_url}/ui/#/s/compose-1")
        page.locator(".msg").nth(1).wait_for()
        release = threading.Event()
        words = "Requests pass through, / the history remembered, / nothing is lost now."
        scripted.push(reply.hold(release, after_chunks=3, reply=reply.text(words, chunk_size=6)))
        page.get_by_label("Message").fill("Shorter, please.")
        page.keyboard.press("Control+Enter")
        live = page.locator(".msg-live .content")
        page.wait_for_function("document.querySelector('.msg-live .content')?.textContent.length > 0")
        assert words.startswith(live.inner_text())
        assert live.inner_text() != words
        assert page.get_by_role("button", name="Stop", exact=True).is_visible()
        screenshot(page, "composer-streaming")
        release.set()
        page.locator(".msg-live").wait_for(state="detached")
        page.locator(".msg").nth(3).wait_for()
        assert page.locator(".msg .content").last.inner_text() == words
        assert page.locator(".msg").count() == 4
        sent = scripted.chat_requests[-1]
        assert sent.json["stream"] is True
        assert sent.json["messages"] == [
            {"role": "user", "content": "Draft a haiku about proxies."},
            {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
            {"role": "user", "content": "Shorter, please."},
        ]
        assert sent.header("authorization") == f"Bearer {key}"
        assert sent.header("session-id") is None
        assert http.get("/v1/sessions/compose-1").json()["message_count"] == 4


def test_end_then_delete_each_after_a_confirmation(page: Any, sites: tuple[str, str]) -> None:
    proxy_url, _ = sites
    key = owner()
    with httpx2.Client(base_url=proxy_url, headers={"authorization": f"Bearer {key}"}, timeout=10) as http:
        chat(http, "to-end", [{"role": "user", "content": "hello"}])
        chat(http, "stays", [{"role": "user", "content": "another"}])
        sign_in(page, proxy_url, key)
        page.goto(f"{proxy_url}/ui/#/s/to-end")
        page.get_by_role("button", name="End", exact=True).click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("button", name="Cancel", exact=True).click()
        assert http.get("/v1/sessions/to-end").json()["status"] == "active"
        page.get_by_role("button", name="End", exact=True).click()
        screenshot(page, "confirm-end")
        page.get_by_role("dialog").get_by_role("button", name="End session", exact=True).click()
        page.locator(".session-head .pill-ended").wait_for()
        assert http.get("/v1/sessions/to-end").json()["status"] == "ended"
        assert page.get_by_label("Message").is_disabled()
        assert "read-only" in page.locator(".composer-note").inner_text()

        page.get_by_role("button", name="Delete", exact=True).click()
        page.get_by_role("dialog").get_by_role("button", name="Delete session", exact=True).click()
        page.wait_for_url(re.compile(r".*#/$"))
        wait_rows(page, ["another"])
        assert http.get("/v1/sessions/to-end").status_code == 404


def test_the_widget_chats_on_a_client_secret_from_another_origin(
    page: Any, sites: tuple[str, str], upstream: tuple[ScriptedUpstream, str]
) -> None:
    proxy_url, page_url = sites
    scripted = upstream[0]
    before = len(scripted.received)
    page.goto(page_url)
    widget = page.locator("statefulproxy-chat")
    widget.locator("textarea").wait_for()
    assert page_url != proxy_url
    scripted.push(reply.text("Your order ships tomorrow morning.", chunk_size=5))
    widget.locator("textarea").fill("Where is my order?")
    widget.locator("textarea").press("Enter")
    widget.locator(".message.assistant", has_text="Your order ships tomorrow morning.").wait_for()
    assert widget.locator(".message.user").inner_text() == "Where is my order?"
    screenshot(page, "widget")
    received = scripted.received[before:]
    assert [request.method for request in received] == ["POST"]  # the preflight was the proxy's
    assert received[0].header("authorization") == f"Bearer {UPSTREAM_KEY}"  # never the browser's secret
    with httpx2.Client(base_url=proxy_url, headers={"authorization": f"Bearer {WIDGET_OWNER}"}) as http:
        session = http.get("/v1/sessions").json()["data"][0]
        assert (session["title"], session["message_count"]) == ("Website visitor", 2)


XSS_TITLE = '<img src=x onerror="window.__xss=1">'
XSS_TEXT = '<script>window.__xss=2</script><img src=x onerror="window.__xss=3">'
PIXEL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def test_stored_markup_stays_text(page: Any, sites: tuple[str, str], upstream: tuple[ScriptedUpstream, str]) -> None:
    proxy_url, _ = sites
    key = owner()
    with httpx2.Client(base_url=proxy_url, headers={"authorization": f"Bearer {key}"}, timeout=10) as http:
        content = [
            {"type": "text", "text": XSS_TEXT},
            {"type": "image_url", "image_url": {"url": PIXEL}},
            {"type": "image_url", "image_url": {"url": "https://tracker.example/pixel.png"}},
        ]
        upstream[0].push(reply.text('<iframe src="javascript:window.__xss=4"></iframe>'))
        chat(http, "xss-1", [{"role": "user", "content": content}])
        http.post("/v1/sessions/xss-1", json={"title": XSS_TITLE, "metadata": {"note": "<b onmouseover=x>hi</b>"}})
        sign_in(page, proxy_url, key)
        page.locator(".row").first.click()
        page.locator(".msg-assistant").wait_for()
        assert page.locator(".row-title").inner_text() == XSS_TITLE
        assert page.locator(".session-title").inner_text() == XSS_TITLE
        assert page.locator(".msg-user .content").first.inner_text() == XSS_TEXT
        assert "<iframe" in page.locator(".msg-assistant .content").inner_text()
        assert page.get_by_text("<b onmouseover=x>hi</b>", exact=True).count() == 1
        assert page.evaluate("window.__xss") is None
        assert page.locator("img[src=x], iframe, script:not([src]), b").count() == 0
        assert page.locator(".thumb-img").get_attribute("src") == PIXEL  # a data image is a thumbnail
        remote = page.locator("a.chip-link")  # a remote one is a link the page never fetches itself
        assert remote.get_attribute("href") == "https://tracker.example/pixel.png"
        assert remote.get_attribute("rel") == "noopener noreferrer"


def test_a_second_key_sees_none_of_the_first_keys_sessions(page: Any, sites: tuple[str, str]) -> None:
    proxy_url, _ = sites
    first, second = owner(), owner()
    with httpx2.Client(base_url=proxy_url, headers={"authorization": f"Bearer {first}"}, timeout=10) as http:
        created = http.post("/v1/sessions", json={"title": "Only for the first key"}).json()["id"]
    sign_in(page, proxy_url, second)
    page.locator(".empty-title", has_text="No sessions yet").wait_for()
    assert rows(page) == []
    page.goto(f"{proxy_url}/ui/#/s/{created}")
    page.locator(".empty-title", has_text="Session not found").wait_for()
    assert page.get_by_text("Only for the first key").count() == 0
    page.get_by_role("button", name="Sign out", exact=True).click()
    page.get_by_label("API key").wait_for()
    assert page.evaluate("sessionStorage.getItem('statefulproxy.key')") is None


def test_edit_export_and_clear(page: Any, sites: tuple[str, str]) -> None:
    proxy_url, _ = sites
    key = owner()
    with httpx2.Client(base_url=proxy_url, headers={"authorization": f"Bearer {key}"}, timeout=10) as http:
        chat(http, "edit-1", [{"role": "user", "content": "first question"}])
        sign_in(page, proxy_url, key)
        page.goto(f"{proxy_url}/ui/#/s/edit-1")
        page.locator(".msg").nth(1).wait_for()
        page.keyboard.press("e")
        dialog = page.get_by_role("dialog")
        dialog.get_by_label("Title").fill("Renamed from the browser")
        dialog.get_by_role("button", name="Add field", exact=True).click()
        dialog.get_by_label("Key").fill("team")
        dialog.get_by_label("Value").fill("blue")
        screenshot(page, "edit")
        dialog.get_by_role("button", name="Save", exact=True).click()
        page.locator(".session-title", has_text="Renamed from the browser").wait_for()
        assert page.locator(".row-title").inner_text() == "Renamed from the browser"
        stored = http.get("/v1/sessions/edit-1").json()
        assert (stored["title"], stored["metadata"]) == ("Renamed from the browser", {"team": "blue"})

        with page.expect_download() as download:
            page.get_by_role("button", name="Export", exact=True).click()
        exported = json.loads(Path(download.value.path()).read_text())
        assert download.value.suggested_filename == "edit-1.json"
        assert exported["id"] == "edit-1"
        assert exported["messages"] == http.get("/v1/sessions/edit-1/messages?include=reply_details").json()["data"]

        page.get_by_role("button", name="Clear", exact=True).click()
        page.get_by_role("dialog").get_by_role("button", name="Clear history", exact=True).click()
        page.locator(".empty-title", has_text="No messages").wait_for()
        assert page.locator(".msg").count() == 0
        assert http.get("/v1/sessions/edit-1").json()["message_count"] == 0


def test_the_list_pages_in_as_it_scrolls_and_the_keyboard_moves_through_it(page: Any, sites: tuple[str, str]) -> None:
    proxy_url, _ = sites
    key = owner()
    with httpx2.Client(base_url=proxy_url, headers={"authorization": f"Bearer {key}"}, timeout=10) as http:
        for number in range(45):
            http.post("/v1/sessions", json={"title": f"Session {number:02d}"})
    sign_in(page, proxy_url, key)
    page.locator(".row").nth(29).wait_for()
    assert page.locator(".row").count() == 30  # one page: the rest is below the fold
    page.locator(".list-scroll").evaluate("list => list.scrollTop = list.scrollHeight")
    page.locator(".row").nth(44).wait_for()
    assert rows(page) == [f"Session {number:02d}" for number in reversed(range(45))]
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("k")
    page.keyboard.press("Enter")
    page.locator(".session-title", has_text="Session 44").wait_for()
