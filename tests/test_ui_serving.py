"""How the proxy serves the session browser (issue 13): its files, their policy, and nothing else."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from http.client import HTTPConnection

import httpx2
import pytest

from harness.stack import Since, Stack, running_stack
from statefulproxy.asgi.ui import UI_FILES

PAGE_FILES = sorted(path.name for path in UI_FILES.iterdir() if path.suffix in (".html", ".js", ".css", ".svg"))


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack("memory://", cors_origins=["https://app.example.com"]) as running:
        yield running


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx2.Client]:
    with stack.http(None) as client:
        yield client


def test_the_prefix_redirects_to_the_page_which_is_served_with_a_strict_policy(http: httpx2.Client) -> None:
    redirect = http.get("/ui", params={"x": "1"})
    assert (redirect.status_code, redirect.headers["location"]) == (308, "/ui/?x=1")
    page = http.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="app.js"></script>' in page.text
    policy = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self' https://app.example.com"
    assert policy["frame-ancestors"] == "'none'"
    assert page.headers["x-frame-options"] == "DENY"
    assert "unsafe" not in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("app.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")],
)
def test_files_have_their_content_types_and_etags(http: httpx2.Client, name: str, content_type: str) -> None:
    response = http.get(f"/ui/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)
    assert response.content == (UI_FILES / name).read_bytes()
    etag = response.headers["etag"]
    assert response.headers["cache-control"] == "no-cache"
    again = http.get(f"/ui/{name}", headers={"if-none-match": f'W/{etag}, "other"'})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    head = http.head(f"/ui/{name}")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(response.content))


def test_the_widget_script_may_be_loaded_by_other_sites(http: httpx2.Client) -> None:
    response = http.get("/ui/widget.js", headers={"origin": "https://app.example.com"})
    assert response.status_code == 200
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "x-frame-options" not in response.headers


def test_config_tells_the_page_where_the_api_is(http: httpx2.Client) -> None:
    config = http.get("/ui/config.json").json()
    assert config["sessions_prefix"] == "/v1/sessions"
    assert config["chat_path"] == "/v1/chat/completions"
    assert config["session_header"] == "session-id"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nope.js",
        "/ui/../pyproject.toml",
        "/ui/%2e%2e/app.py",
        "/ui/..%2fsettings.py",
        "/ui/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/ui//etc/passwd",
        "/ui/ui.py",
        "/ui/index.html/",
        "/ui/.",
    ],
)
def test_unknown_files_are_404_and_no_path_reaches_the_file_system(stack: Stack, path: str) -> None:
    since = Since(stack)
    # sent as written (http.client resolves no dot segments)
    connection = HTTPConnection(stack.url.removeprefix("http://"), timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        status, body = response.status, response.read()
    finally:
        connection.close()
    assert status == 404, body
    assert json.loads(body)["error"]["code"] == "not_found"
    assert since.received == []


def test_only_get_and_head(http: httpx2.Client) -> None:
    response = http.post("/ui/", content=b"x")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_a_path_that_only_starts_like_the_prefix_is_forwarded(stack: Stack, http: httpx2.Client) -> None:
    since = Since(stack)
    assert http.get("/uix/app.js").status_code == 200
    assert [request.path for request in since.received] == ["/uix/app.js"]


def test_ui_off_or_elsewhere() -> None:
    with running_stack("memory://", ui=False) as stack, stack.http(None) as http:
        since = Since(stack)
        assert http.get("/ui/").json()["path"] == "/ui/"  # the upstream's echo: forwarded like any path
        assert len(since.received) == 1
    with running_stack("memory://", ui_prefix="/console") as stack, stack.http(None) as http:
        assert http.get("/console/app.js").status_code == 200
        assert http.get("/ui/app.js").json()["path"] == "/ui/app.js"


def test_the_pages_never_build_html_from_strings_nor_inline_scripts_or_styles() -> None:
    unsafe = re.compile(r"\.innerHTML|\.outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function")
    for name in PAGE_FILES:
        assert unsafe.search((UI_FILES / name).read_text()) is None, name
    page = (UI_FILES / "index.html").read_text()
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None
    assert re.search(r"<style|\sstyle=|\son[a-z]+=", page) is None
