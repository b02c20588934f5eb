"""One page of an owner's sessions, with the management API's filters.

The store filters by status, metadata and namespace itself. The title search ``q`` is applied
here, over the store's pages: pages of ``SCAN_PAGE`` sessions are read in the listing's order
(from the cursor, backwards for ``before`` alone) until ``limit`` matches and one more are found
or the sessions run out. Every store answers alike, and no store script changes; a search costs
a read of the sessions it passes over (an owner holds at most ``max_sessions_per_owner``).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..stores.base import SessionRecord, Store
from .api_models import MAX_LIMIT, SessionsQuery

SCAN_PAGE = MAX_LIMIT

Page = tuple[list[SessionRecord], bool]


async def list_sessions(store: Store, owner: str, query: SessionsQuery, namespace: str | None) -> Page | None:
    """The page and whether more follow; None when a cursor names no session of the listing."""
    if not query.q:
        return await store.list_sessions(
            owner,
            limit=query.limit,
            order=query.order,
            after=query.after,
            before=query.before,
            status=query.status,
            metadata=query.metadata,
            namespace=namespace,
        )
    return await _search(store, owner, query, namespace, query.q.casefold())


async def _search(store: Store, owner: str, query: SessionsQuery, namespace: str | None, needle: str) -> Page | None:
    backwards = query.before is not None and query.after is None
    found: list[SessionRecord] = []  # in the walk's order
    walked: list[str] = []  # the ids passed over, in the walk's order: the next page starts past the last
    seen: set[str] = set()
    while len(found) <= query.limit:
        cursor = walked[-1] if walked else None
        page = await store.list_sessions(
            owner,
            limit=SCAN_PAGE,
            order=query.order,
            after=query.after if backwards or cursor is None else cursor,
            before=cursor if backwards and cursor is not None else query.before,
            status=query.status,
            metadata=query.metadata,
            namespace=namespace,
        )
        if page is None:
            if not walked:
                return None  # the client's own cursor
            walked.pop()  # the session paged from was deleted meanwhile: page on from the one before it
            continue
        records, more = page
        new = _unseen(reversed(records) if backwards else records, seen)
        walked += [record.id for record in new]
        found += [record for record in new if record.title is not None and needle in record.title.casefold()]
        if not more or not new:
            break
    page_found = found[: query.limit]
    if backwards:
        page_found.reverse()
    return page_found, len(found) > query.limit


def _unseen(records: Iterable[SessionRecord], seen: set[str]) -> list[SessionRecord]:
    new = [record for record in records if record.id not in seen]
    seen.update(record.id for record in new)
    return new
