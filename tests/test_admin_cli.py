"""``statefulproxy sessions``: export one owner's sessions from one store and import them into another.

Sessions are made through the proxy with the real SDKs and the management API; after the round
trip the new store's proxy answers ``GET /v1/sessions/{id}``, its messages and the listing with the
same bytes, and a turn on an imported session replays what the upstream produced (an Anthropic
thinking block and its signature). On memory:// the admin functions run in the proxy's process,
on its store object; on Redis the real command runs too.
"""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest

from harness import upstream as reply
from harness.dialect_replies import ANTHROPIC_PATH
from harness.servers import ServerHandle, run_server, serve
from harness.upstream import ScriptedUpstream
from statefulproxy import ProxyApp, admin, settings_from_mapping
from statefulproxy.progress import ProgressBar, render
from statefulproxy.settings import Settings
from statefulproxy.stores import Store, store_from_url

SECRET = "admin-test-scope-secret"
SIGNATURE = "RXBoZW1lcmFs+/c2lnbmF0dXJl=="
THINKING: Any = {"type": "enabled", "budget_tokens": 1024}


@dataclass
class Proxy:
    server: ServerHandle
    store: Store
    settings: Settings

    @property
    def url(self) -> str:
        return self.server.url

    def http(self, key: str) -> httpx2.Client:
        return httpx2.Client(base_url=self.url, headers={"authorization": f"Bearer {key}"}, timeout=10)

    def owner(self, key: str) -> str:
        return self.server.call(lambda: admin.owner_for(self.store, self.settings, api_key=key, owner=None))

    def export(self, key: str) -> bytes:
        out, owner = io.BytesIO(), self.owner(key)
        missing = self.server.call(lambda: admin.export_sessions(self.store, owner, out))
        assert missing == []
        return out.getvalue()

    def import_(self, key: str, data: bytes, *, replace: bool = False) -> tuple[admin.ImportReport, list[str]]:
        report, warnings = admin.ImportReport(), []
        owner = self.owner(key)
        lines = io.BytesIO(data)
        self.server.call(
            lambda: admin.import_sessions(self.store, owner, lines, report, replace=replace, warn=warnings.append)
        )
        return report, warnings

    def views(self, key: str) -> dict[str, bytes]:
        """The management API's bytes: the listing, and each session and its messages."""
        with self.http(key) as http:
            listing = http.get("/v1/sessions", params={"limit": 100})
            found = {"list": listing.content}
            for session in listing.json()["data"]:
                found[session["id"]] = http.get(f"/v1/sessions/{session['id']}").content
                found[session["id"] + "/messages"] = http.get(
                    f"/v1/sessions/{session['id']}/messages", params={"limit": 100}
                ).content
        return found


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[ScriptedUpstream, str]]:
    scripted = ScriptedUpstream()
    with serve(scripted, loop="uvloop") as url:
        yield scripted, url


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    return "memory://" if request.param == "memory" else str(request.getfixturevalue("redis_url"))


@pytest.fixture
def proxies(store_url: str, upstream: tuple[ScriptedUpstream, str]) -> Iterator[tuple[Proxy, Proxy]]:
    """Two proxies, each on its own store (a fresh key prefix on one Redis), with one scope_secret."""
    values = {"upstream": upstream[1], "store": store_url, "scope_secret": SECRET}
    settings = settings_from_mapping(values, source="test")
    stores = [store_from_url(store_url, ttl=3600, key_prefix=f"admin-{uuid.uuid4().hex[:12]}") for _ in range(2)]
    with (
        run_server(ProxyApp(settings, store=stores[0]), loop="uvloop") as first,
        run_server(ProxyApp(settings, store=stores[1]), loop="uvloop") as second,
    ):
        yield Proxy(first, stores[0], settings), Proxy(second, stores[1], settings)


def make_sessions(proxy: Proxy, scripted: ScriptedUpstream) -> None:
    """Sessions of key-1 made with the SDKs and the management API; one of key-2."""
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key="key-1", max_retries=0) as client:
        for text in ("My name is Ada.", "What is my name?"):
            system: Any = {"role": "system", "content": "be brief"}
            messages: Any = [system, {"role": "user", "content": text}]
            client.chat.completions.create(model="m", messages=messages, extra_headers={"session-id": "chat-1"})
    scripted.push(reply.text("Rome.", reasoning="Think of Italy.", signature=SIGNATURE), path=ANTHROPIC_PATH)
    headers = {"session-id": "think-1"}
    question: Any = [{"role": "user", "content": "Capital?"}]
    with (
        anthropic.Anthropic(base_url=proxy.url, api_key="key-1", max_retries=0, default_headers=headers) as client,
        client.messages.stream(model="claude-x", max_tokens=2048, thinking=THINKING, messages=question) as events,
    ):
        assert events.get_final_message().content[0].type == "thinking"
    with proxy.http("key-1") as http:
        body = {
            "title": "Support #42",
            "metadata": {"team": "blue"},
            "expires_after": {"anchor": "created_at", "seconds": 3600},
            "rate_limits": {"max_requests_per_1_minute": 30},
            "max_requests": 500,
            "history_window": {"max_messages": 10},
        }
        made = http.post("/v1/sessions", json=body)
        assert made.status_code == 201
        ended = http.post("/v1/sessions", json={"title": "done"}).json()["id"]
        assert http.post(f"/v1/sessions/{ended}/end").json()["status"] == "ended"
    with proxy.http("key-2") as http:
        other = {"model": "m", "messages": [{"role": "user", "content": "mine"}]}
        assert http.post("/v1/chat/completions", json=other, headers={"session-id": "other-1"}).status_code == 200


def test_a_round_trip_keeps_every_byte_the_api_shows(
    proxies: tuple[Proxy, Proxy], upstream: tuple[ScriptedUpstream, str]
) -> None:
    source, target = proxies
    scripted = upstream[0]
    make_sessions(source, scripted)
    exported = source.export("key-1")
    lines = [orjson.loads(line) for line in exported.splitlines()]
    assert [line["id"] for line in lines][:2] == ["chat-1", "think-1"]  # oldest first
    assert len(lines) == 4
    assert all(set(line) >= {"id", "object", "messages"} for line in lines)

    report, warnings = target.import_("key-1", exported)
    assert (report.imported, report.skipped, report.refused, warnings) == (4, 0, 0, [])
    assert target.views("key-1") == source.views("key-1")
    assert target.export("key-1") == exported
    assert target.views("key-2") == {
        "list": b'{"object":"list","data":[],"first_id":null,"last_id":null,"has_more":false}'
    }

    # the imported session goes on, and the upstream gets back what it produced, signature included
    before = len(scripted.received)
    headers = {"session-id": "think-1"}
    with anthropic.Anthropic(base_url=target.url, api_key="key-1", max_retries=0, default_headers=headers) as client:
        client.messages.create(model="claude-x", max_tokens=64, messages=[{"role": "user", "content": "Sure?"}])
    replayed = scripted.received[before].json["messages"]
    assert replayed[1]["content"][0] == {"type": "thinking", "thinking": "Think of Italy.", "signature": SIGNATURE}
    assert replayed[2] == {"role": "user", "content": "Sure?"}


def test_owners_see_only_their_own(proxies: tuple[Proxy, Proxy], upstream: tuple[ScriptedUpstream, str]) -> None:
    source, target = proxies
    make_sessions(source, upstream[0])
    assert [orjson.loads(line)["id"] for line in source.export("key-2").splitlines()] == ["other-1"]
    assert source.export("key-3") == b""
    assert source.owner("key-1") != source.owner("key-2")
    report, _ = target.import_("key-2", source.export("key-2"))
    assert report.imported == 1
    with target.http("key-1") as http:
        assert http.get("/v1/sessions/other-1").status_code == 404
    with target.http("key-2") as http:
        assert http.get("/v1/sessions/other-1").status_code == 200


def test_taken_ids_are_skipped_unless_replaced_and_bad_lines_refused(
    proxies: tuple[Proxy, Proxy], upstream: tuple[ScriptedUpstream, str]
) -> None:
    source, target = proxies
    make_sessions(source, upstream[0])
    exported = source.export("key-1")
    assert target.import_("key-1", exported)[0].imported == 4
    with target.http("key-1") as http:  # the copy moves on
        body = {"model": "m", "messages": [{"role": "user", "content": "more"}]}
        assert http.post("/v1/chat/completions", json=body, headers={"session-id": "chat-1"}).status_code == 200
    report, warnings = target.import_("key-1", exported)
    assert (report.imported, report.skipped) == (0, 4)
    assert warnings[0] == "line 1: session 'chat-1' exists: skipped (--replace overwrites it)"
    assert target.views("key-1")["chat-1"] != source.views("key-1")["chat-1"]
    report, _ = target.import_("key-1", exported, replace=True)
    assert report.imported == 4
    assert target.views("key-1") == source.views("key-1")

    first = orjson.loads(exported.splitlines()[0])
    unknown = {**first, "id": "bad-2", "messages": [{**first["messages"][0], "colour": "red"}, *first["messages"][1:]]}
    bad = [b"not json", orjson.dumps({**first, "id": "bad-1", "message_count": 99}), orjson.dumps(unknown), b""]
    report, warnings = target.import_("key-2", b"\n".join([*bad, exported.splitlines()[1]]))
    assert (report.imported, report.refused) == (1, 3)
    assert warnings == [
        "line 1: not valid JSON",
        "line 2: 'messages' must be a list of the session's 99 messages",
        "line 3: messages[0] is not a message the proxy stores (unexpected colour)",
    ]


# --- the real command, on Redis -------------------------------------------------


def run(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    environ = {name: value for name, value in os.environ.items() if not name.startswith("STATEFULPROXY_")}
    command = [sys.executable, "-m", "statefulproxy", "sessions", *args]
    return subprocess.run(command, input=stdin, capture_output=True, env={**environ, **(env or {})}, timeout=60)


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[tuple[str, str]]:
    """A proxy on the mock upstream and a fresh prefix of the suite's Redis, without a scope_secret:
    owners are keyed by the secret the store keeps."""
    prefix = f"admin-{uuid.uuid4().hex[:12]}"
    settings = settings_from_mapping({"upstream": "mock://", "store": redis_url, "store_prefix": prefix}, source="t")
    with serve(ProxyApp(settings), loop="uvloop") as url:
        yield url, prefix


def test_the_command_exports_imports_lists_shows_and_deletes(redis_url: str, redis_proxy: tuple[str, str]) -> None:
    url, prefix = redis_proxy
    with httpx2.Client(base_url=url, headers={"authorization": "Bearer key-1"}, timeout=10) as http:
        for session_id, text in (("a-1", "one"), ("a-2", "two"), ("a-1", "three")):
            body = {"model": "m", "messages": [{"role": "user", "content": text}]}
            assert http.post("/v1/chat/completions", json=body, headers={"session-id": session_id}).status_code == 200
        api = http.get("/v1/sessions").json()["data"]
        shown = http.get("/v1/sessions/a-1").content
    store = ["--store", redis_url, "--store-prefix", prefix, "--api-key", "key-1"]

    listed = run("list", *store)
    assert listed.returncode == 0
    assert [line.split(b"\t")[:3] for line in listed.stdout.splitlines()] == [
        [b"a-2", b"active", b"2"],
        [b"a-1", b"active", b"4"],
    ]
    assert [orjson.loads(line) for line in run("list", "--json", *store).stdout.splitlines()] == api
    assert run("show", "a-1", *store).stdout == shown + b"\n"
    assert run("list", "--store", redis_url, "--store-prefix", prefix, "--api-key", "key-2").stdout == b""

    exported = run("export", *store)
    assert (exported.returncode, exported.stderr) == (0, b"")  # no bar: stderr is no terminal
    other = f"{prefix}-copy"
    copy = ["--store", redis_url, "--store-prefix", other, "--api-key", "key-1"]
    imported = run("import", *copy, stdin=exported.stdout)
    assert (imported.returncode, imported.stderr) == (0, b"imported 2 sessions, skipped 0 that exist, refused 0\n")
    again = run("import", *copy, stdin=exported.stdout)
    assert again.returncode == 1
    assert again.stderr.splitlines()[0] == (
        b"statefulproxy sessions: line 1: session 'a-1' exists: skipped (--replace overwrites it)"
    )
    assert run("import", "--replace", *copy, stdin=exported.stdout).returncode == 0
    assert run("export", *copy).stdout == exported.stdout
    assert run("show", "a-1", *copy).stdout == shown + b"\n"  # the other store's own secret, the same owner

    assert run("delete", "a-1", *copy).stdout == b"deleted a-1\n"
    gone = run("show", "a-1", *copy)
    assert (gone.returncode, gone.stderr) == (1, b"statefulproxy sessions: error: no session 'a-1' for this owner\n")
    missing = run("export", "a-1", "a-2", *copy)
    assert missing.returncode == 1
    assert [orjson.loads(line)["id"] for line in missing.stdout.splitlines()] == ["a-2"]


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["list", "--store", "redis://h"], 2, "name the owner: --api-key KEY, --owner HASH or --anonymous"),
        (["list", "--api-key", "k"], 2, "store: give the proxy's shared store with --store (redis://...)"),
        (["list", "--owner", "xyz", "--store", "redis://h"], 2, "--owner: must be an owner hash"),
        (["show", "bad id!", "--anonymous", "--store", "redis://h"], 2, "'bad id!' is not a session id"),
        (["frobnicate"], 2, "argument COMMAND: invalid choice: 'frobnicate'"),
        (["list", "--api-key", "k", "--store", "redis://127.0.0.1:1/0"], 1, "redis store: open failed"),
        (["list", "--api-key", "k", "--store", "bogus://x"], 2, "store: must be a memory://, redis://"),
    ],
)
def test_errors_are_one_line(args: list[str], status: int, message: str) -> None:
    result = run(*args)
    assert result.returncode == status
    assert result.stderr.count(b"\n") == 1, result.stderr
    assert result.stderr.startswith(b"statefulproxy sessions: error: ")
    assert message.encode() in result.stderr
    assert b"Traceback" not in result.stderr


def test_a_bad_line_is_reported_and_the_rest_imported(redis_url: str, redis_proxy: tuple[str, str]) -> None:
    url, prefix = redis_proxy
    with httpx2.Client(base_url=url, headers={"x-api-key": "key-9"}, timeout=10) as http:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert http.post("/v1/chat/completions", json=body, headers={"session-id": "b-1"}).status_code == 200
    store = ["--store", redis_url, "--store-prefix", prefix, "--api-key", "key-9"]
    line = run("export", *store).stdout
    result = run("import", "--store", redis_url, "--store-prefix", prefix + "-b", "--anonymous", stdin=b"{}\n" + line)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        b'statefulproxy sessions: line 1: not a session object (no "object": "session")',
        b"imported 1 sessions, skipped 0 that exist, refused 1",
    ]


def test_the_progress_bar_is_drawn_on_a_terminal(redis_url: str, redis_proxy: tuple[str, str]) -> None:
    url, prefix = redis_proxy
    with httpx2.Client(base_url=url, timeout=10) as http:  # anonymous sessions
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert http.post("/v1/chat/completions", json=body, headers={"session-id": "p-1"}).status_code == 200
    leader, follower = pty.openpty()
    try:
        environ = {name: value for name, value in os.environ.items() if not name.startswith("STATEFULPROXY_")}
        command = [sys.executable, "-m", "statefulproxy", "sessions", "export", "--anonymous"]
        command += ["--store", redis_url, "--store-prefix", prefix]
        result = subprocess.run(command, stderr=follower, stdout=subprocess.PIPE, env=environ, timeout=60)
        os.close(follower)
        drawn = b""
        while chunk := _read(leader):
            drawn += chunk
    finally:
        os.close(leader)
    assert result.returncode == 0
    assert b"export [" + b"#" * 30 + b"] 100%  1/1 sessions" in drawn
    assert drawn.endswith(b"\r\x1b[K")  # erased at the end
    assert orjson.loads(result.stdout)["id"] == "p-1"


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the terminal's other end is closed and drained
        return b""


def test_progress_bar_frames() -> None:
    assert render("export", 0.5, "2/4 sessions") == "export [" + "#" * 15 + "-" * 15 + "]  50%  2/4 sessions"
    assert render("import", None, "7 sessions imported") == "import  7 sessions imported"
    now = [0.0]
    out = io.StringIO()
    bar = ProgressBar(out, "export", enabled=True, clock=lambda: now[0])
    bar.update(0.1, "a")
    bar.update(0.2, "b")  # within 0.1 s of the last redraw: skipped
    now[0] = 0.5
    bar.update(0.3, "c")
    bar.close()
    assert out.getvalue().count("\r\x1b[K") == 3
    assert "b" not in out.getvalue().replace("\x1b[K", "")
    quiet = io.StringIO()
    ProgressBar(quiet, "x").update(0.5, "y")  # a StringIO is no terminal
    assert quiet.getvalue() == ""
