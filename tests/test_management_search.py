"""The session list's filters for the session browser (issue 13, item 4): ``q``, a case-insensitive title
search, beside ``status``, ``metadata[KEY]=VALUE`` and the namespace. Through ManagementAPI (ASGI, called
directly) on memory:// and a real Redis; each answer is held to the same oracle, so both stores agree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

import test_store_contract as contract
from statefulproxy.asgi.management import ManagementAPI
from statefulproxy.asgi.session_listing import SCAN_PAGE
from statefulproxy.stores import NewSession, SessionRecord, Store
from statefulproxy.types import Message, Scope
from test_store_contract import StoreFactory

backend, store_url, make_store = contract.backend, contract.store_url, contract.make_store

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backend", ["memory", "redis"])]

OWNER = "owner-1"
Made = dict[str, Any]  # id, title, metadata, namespace, status, in creation order


async def owner_for(scope: Scope) -> str:
    return OWNER


async def listing(store: Store, query: dict[str, Any], namespace: str | None = None) -> tuple[int, Any]:
    api = ManagementAPI(store, owner_for, "/v1/sessions", None)
    scope = {"type": "http", "method": "GET", "path": "/v1/sessions", "query_string": urlencode(query).encode()}
    scope["headers"] = []
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    if namespace is None:
        await api(scope, receive, send, "")
    else:
        await api(scope, receive, send, "", namespace=namespace)
    return sent[0]["status"], orjson.loads(sent[1]["body"])


async def make(store: Store, titles: Sequence[str | None], *, ended: Sequence[int] = ()) -> list[Made]:
    """Sessions s000, s001, ... with these titles (creation order); every other one in team a, every
    third in a namespace; the ``ended`` ones ended."""
    made = []
    for number, title in enumerate(titles):
        session_id = f"s{number:03d}"
        new = NewSession(
            title=title,
            metadata={"team": "ab"[number % 2]},
            namespace="/document/d1" if number % 3 == 0 else None,
        )
        assert await store.create(OWNER, session_id, new) is not None
        if number in ended:
            assert await store.end(OWNER, session_id) is not None
        status = "ended" if number in ended else "active"
        made.append(
            {"id": session_id, "title": title, "team": new.metadata["team"], "ns": new.namespace, "status": status}
        )
    return made


def expected(made: Sequence[Made], query: dict[str, Any], namespace: str | None = None) -> list[str]:
    """The oracle: the listing, in its order, of the sessions the filters keep."""
    needle = str(query.get("q", "")).casefold()
    kept = [
        session["id"]
        for session in made
        if (not needle or (session["title"] is not None and needle in session["title"].casefold()))
        and query.get("status") in (None, session["status"])
        and query.get("metadata[team]") in (None, session["team"])
        and (namespace is None or (session["ns"] or "") == namespace)
    ]
    return kept if query.get("order") == "asc" else kept[::-1]


async def every_page(store: Store, query: dict[str, Any], namespace: str | None = None) -> list[str]:
    """All pages, following ``after``; each page's ``has_more`` says whether another follows."""
    found: list[str] = []
    page: dict[str, Any] = {"has_more": True, "last_id": None}
    while page["has_more"]:
        cursor = {} if page["last_id"] is None else {"after": page["last_id"]}
        status, page = await listing(store, {**query, **cursor}, namespace)
        assert status == 200, page
        assert len(page["data"]) == (query.get("limit") if page["has_more"] else len(page["data"]))
        found += [session["id"] for session in page["data"]]
    return found


async def test_q_finds_titles_in_any_case(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    titles = ["Planning Q3", "planning", "Other", None, "PLANNING notes", "Straße", "re-planning", "plan"]
    made = await make(store, titles, ended=[4])
    for query in (
        {"q": "planning"},
        {"q": "PLANNING"},
        {"q": "strasse"},  # casefolded: ß is ss
        {"q": "nothing like it"},
        {"q": ""},  # no search: every session
        {"q": "planning", "status": "active"},
        {"q": "plan", "metadata[team]": "a"},
        {"q": "planning", "order": "asc", "limit": 2},
    ):
        status, page = await listing(store, query)
        assert status == 200, page
        ids = expected(made, query)[: query.get("limit", 20)]
        assert [session["id"] for session in page["data"]] == ids, query
        assert page["has_more"] is (len(expected(made, query)) > len(ids))
    assert expected(made, {"q": "planning"}) == ["s006", "s004", "s001", "s000"]


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_a_search_pages_over_more_sessions_than_a_store_page(make_store: StoreFactory, order: str) -> None:
    store = make_store(ttl=3600)
    count = SCAN_PAGE * 2 + 30
    made = await make(store, [f"{'Match' if n % 7 == 0 else 'other'} {n}" for n in range(count)], ended=[0, 7, 70])
    for query in (
        {"q": "match", "limit": 7},
        {"q": "MATCH", "limit": 100},
        {"q": "match", "limit": 3, "status": "active", "metadata[team]": "b"},
        {"q": "match 1", "limit": 1},
    ):
        query = {**query, "order": order}
        assert await every_page(store, query) == expected(made, query), query
    in_document = {"q": "match", "limit": 4, "order": order}
    assert await every_page(store, in_document, "/document/d1") == expected(made, in_document, "/document/d1")
    assert await every_page(store, in_document, "") == expected(made, in_document, "")


async def test_before_pages_a_search_backwards(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    made = await make(store, [f"{'Match' if n % 5 == 0 else 'other'} {n}" for n in range(SCAN_PAGE + 60)])
    everything = expected(made, {"q": "match"})
    before = everything[30]  # 150 sessions and more between it and the newest
    status, page = await listing(store, {"q": "match", "limit": 4, "before": before})
    assert status == 200
    assert ([session["id"] for session in page["data"]], page["has_more"]) == (everything[26:30], True)
    status, page = await listing(store, {"q": "match", "limit": 40, "before": before})
    assert ([session["id"] for session in page["data"]], page["has_more"]) == (everything[:30], False)
    status, page = await listing(store, {"q": "match", "limit": 4, "after": everything[2], "before": everything[5]})
    assert ([session["id"] for session in page["data"]], page["has_more"]) == (everything[3:5], False)


class DeletesTheCursor:
    """A store that deletes the last session of the first page it lists, as another request could
    between two of a search's pages: the search must page on past it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: list[tuple[str | None, str | None]] = []
        self.deleted: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def list_sessions(self, owner: str, **options: Any) -> tuple[list[SessionRecord], bool] | None:
        self.calls.append((options["after"], options["before"]))
        page = await self.store.list_sessions(owner, **options)
        if page is not None and self.deleted is None:
            self.deleted = page[0][-1].id
            assert await self.store.delete(owner, self.deleted)
        return page


async def test_a_session_deleted_while_a_search_pages_is_passed_over(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    made = await make(store, [f"{'Match' if n < 20 else 'other'} {n}" for n in range(SCAN_PAGE + 40)])
    deleting = DeletesTheCursor(store)
    status, page = await listing(deleting, {"q": "match", "limit": 5})  # type: ignore[arg-type]
    assert status == 200, page
    gone = deleting.deleted
    assert gone is not None
    assert [session["id"] for session in page["data"]] == expected(made, {"q": "match"})[:5]
    # the second page's cursor was gone: the one before it was paged from instead
    assert deleting.calls[1] == (gone, None)
    assert deleting.calls[2][0] != gone
    rest = await every_page(store, {"q": "match", "limit": 5})
    assert rest == expected([session for session in made if session["id"] != gone], {"q": "match"})


async def test_a_search_from_a_cursor_that_names_no_session_is_a_400(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    await make(store, ["one", "two"])
    status, page = await listing(store, {"q": "o", "after": "nowhere"})
    assert status == 400
    assert (page["error"]["message"], page["error"]["param"]) == ("No session with id 'nowhere' to page from.", "after")
    status, page = await listing(store, {"q": "o", "after": "s000"}, namespace="/elsewhere")
    assert status == 400  # a session of another namespace is no cursor there
