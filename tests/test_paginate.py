from __future__ import annotations

from typing import Any

import orjson
import pytest

from statefulproxy.asgi.api_models import message_object, paginate, session_object
from statefulproxy.errors import ClientError
from statefulproxy.stores.base import SessionRecord, StoredMessage

ITEMS = [{"id": f"msg_{i:02d}", "n": i} for i in range(45)]
IDS = [item["id"] for item in ITEMS]


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["data"]]


def bad(query: dict[str, str], param: str) -> None:
    with pytest.raises(ClientError) as info:
        paginate(ITEMS, query)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    assert info.value.param == param


# --- the envelope -------------------------------------------------------------------------------


def test_envelope_shape() -> None:
    page = paginate(ITEMS, {})
    assert list(page) == ["object", "data", "first_id", "last_id", "has_more"]
    assert page["object"] == "list"
    assert page["data"] == ITEMS[:20]


def test_empty_list() -> None:
    assert paginate([], {}) == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    assert paginate([], {"order": "desc", "page": "3"})["data"] == []


# --- limit --------------------------------------------------------------------------------------


def test_limit_defaults_to_20() -> None:
    page = paginate(ITEMS, {})
    assert ids(page) == IDS[:20]
    assert page["first_id"] == "msg_00"
    assert page["last_id"] == "msg_19"
    assert page["has_more"] is True


@pytest.mark.parametrize("limit", [1, 7, 20, 44, 45, 100])
def test_limit(limit: int) -> None:
    page = paginate(ITEMS, {"limit": str(limit)})
    assert ids(page) == IDS[:limit]
    assert page["has_more"] is (limit < 45)


def test_limit_max_is_100() -> None:
    many = [{"id": f"m{i}"} for i in range(150)]
    assert len(paginate(many, {"limit": "100"})["data"]) == 100
    with pytest.raises(ClientError):
        paginate(many, {"limit": "101"})


@pytest.mark.parametrize("value", ["0", "101", "1000", "-1", "abc", "", "1.5", " 5", "5 ", "+5", "1e2", "0x10"])
def test_bad_limit_is_a_400(value: str) -> None:
    bad({"limit": value}, "limit")


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "\u0661\u0660"])
def test_non_ascii_digits_are_a_400(value: str) -> None:
    # Was a bug in management._int_param: str.isdigit() accepts a superscript two, which int() then
    # refuses with a ValueError (a 500); Arabic-Indic "10" was read as 10.
    bad({"limit": value}, "limit")
    bad({"page": value}, "page")


@pytest.mark.parametrize("param", ["limit", "page"])
def test_huge_number_is_a_400(param: str) -> None:
    # Was a bug in management._int_param: int() refuses strings of more than 4300 digits
    # with a ValueError (a 500).
    bad({param: "9" * 5000}, param)


def test_leading_zeros_accepted() -> None:
    assert ids(paginate(ITEMS, {"limit": "005", "page": "01"})) == IDS[5:10]


# --- order --------------------------------------------------------------------------------------


def test_order_asc_is_the_default() -> None:
    assert paginate(ITEMS, {"order": "asc", "limit": "45"}) == paginate(ITEMS, {"limit": "45"})
    assert ids(paginate(ITEMS, {"limit": "45"})) == IDS


def test_order_desc() -> None:
    page = paginate(ITEMS, {"order": "desc"})
    assert ids(page) == IDS[::-1][:20]
    assert page["first_id"] == "msg_44"
    assert page["last_id"] == "msg_25"
    assert page["has_more"] is True


@pytest.mark.parametrize("value", ["ASC", "descending", "", "newest"])
def test_bad_order_is_a_400(value: str) -> None:
    bad({"order": value}, "order")


# --- cursors ------------------------------------------------------------------------------------


def test_after() -> None:
    page = paginate(ITEMS, {"after": "msg_19"})
    assert ids(page) == IDS[20:40]
    assert page["has_more"] is True
    last = paginate(ITEMS, {"after": "msg_39"})
    assert ids(last) == IDS[40:]
    assert last["has_more"] is False


def test_after_the_last_item_is_empty() -> None:
    page = paginate(ITEMS, {"after": "msg_44"})
    assert page == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


def test_after_in_descending_order() -> None:
    page = paginate(ITEMS, {"order": "desc", "after": "msg_30", "limit": "5"})
    assert ids(page) == ["msg_29", "msg_28", "msg_27", "msg_26", "msg_25"]
    assert page["has_more"] is True


def test_before() -> None:
    page = paginate(ITEMS, {"before": "msg_20", "limit": "5"})
    assert ids(page) == ["msg_15", "msg_16", "msg_17", "msg_18", "msg_19"]
    assert page["first_id"] == "msg_15"
    assert page["last_id"] == "msg_19"
    assert page["has_more"] is True  # msg_00..msg_14 lie before the page


def test_before_reaching_the_start_has_no_more() -> None:
    page = paginate(ITEMS, {"before": "msg_05", "limit": "5"})
    assert ids(page) == IDS[:5]
    assert page["has_more"] is False


def test_before_near_the_start() -> None:
    assert ids(paginate(ITEMS, {"before": "msg_03"})) == IDS[:3]
    assert paginate(ITEMS, {"before": "msg_00"})["data"] == []


def test_before_in_descending_order() -> None:
    page = paginate(ITEMS, {"order": "desc", "before": "msg_40", "limit": "3"})
    assert ids(page) == ["msg_43", "msg_42", "msg_41"]


def test_after_and_before() -> None:
    page = paginate(ITEMS, {"after": "msg_05", "before": "msg_10"})
    assert ids(page) == ["msg_06", "msg_07", "msg_08", "msg_09"]
    assert page["has_more"] is False
    limited = paginate(ITEMS, {"after": "msg_05", "before": "msg_10", "limit": "2"})
    assert ids(limited) == ["msg_06", "msg_07"]
    assert limited["has_more"] is True


@pytest.mark.parametrize("param", ["after", "before"])
@pytest.mark.parametrize("value", ["msg_99", "", "MSG_01", "msg_1"])
def test_unknown_cursor_is_a_400(param: str, value: str) -> None:
    bad({param: value}, param)


# --- pages --------------------------------------------------------------------------------------


def test_pages_are_zero_based() -> None:
    assert paginate(ITEMS, {"page": "0"}) == paginate(ITEMS, {})
    page1 = paginate(ITEMS, {"page": "1"})
    assert ids(page1) == IDS[20:40]
    assert page1["has_more"] is True
    page2 = paginate(ITEMS, {"page": "2"})
    assert ids(page2) == IDS[40:]
    assert page2["has_more"] is False
    assert paginate(ITEMS, {"page": "3"})["data"] == []
    assert paginate(ITEMS, {"page": "3"})["has_more"] is False


def test_page_size_follows_limit() -> None:
    assert ids(paginate(ITEMS, {"page": "2", "limit": "7"})) == IDS[14:21]
    assert ids(paginate(ITEMS, {"page": "1", "order": "desc", "limit": "10"})) == IDS[::-1][10:20]


def test_page_far_past_the_end() -> None:
    assert paginate(ITEMS, {"page": "2147483648"})["data"] == []


@pytest.mark.parametrize("value", ["-1", "x", "", "1.0", "2147483649"])
def test_bad_page_is_a_400(value: str) -> None:
    bad({"page": value}, "page")


def test_exact_page_boundary_has_no_more() -> None:
    forty = ITEMS[:40]
    assert paginate(forty, {"page": "1"})["has_more"] is False
    assert paginate(forty, {"after": "msg_19"})["has_more"] is False
    assert paginate(forty, {"page": "0"})["has_more"] is True


# --- walking the whole list ---------------------------------------------------------------------


def walk_by_cursor(items: list[dict[str, Any]], query: dict[str, str]) -> list[str]:
    seen: list[str] = []
    page = paginate(items, query)
    while True:
        seen.extend(ids(page))
        if page["data"]:
            assert page["first_id"] == page["data"][0]["id"]
            assert page["last_id"] == page["data"][-1]["id"]
        if not page["has_more"]:
            return seen
        page = paginate(items, {**query, "after": page["last_id"]})


def walk_by_page(items: list[dict[str, Any]], query: dict[str, str]) -> list[str]:
    seen: list[str] = []
    number = 0
    while True:
        page = paginate(items, {**query, "page": str(number)})
        seen.extend(ids(page))
        if not page["has_more"]:
            return seen
        number += 1


@pytest.mark.parametrize("count", [0, 1, 19, 20, 21, 40, 45])
@pytest.mark.parametrize("limit", [None, "1", "7", "20", "45", "100"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_walks_by_cursor_and_by_page_agree(count: int, limit: str | None, order: str) -> None:
    items = ITEMS[:count]
    query = {"order": order} if limit is None else {"order": order, "limit": limit}
    expected = IDS[:count] if order == "asc" else IDS[:count][::-1]
    assert walk_by_cursor(items, query) == expected
    assert walk_by_page(items, query) == expected


# --- the objects the management API lists ------------------------------------------------------


def test_message_object() -> None:
    replay = {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {}}]}
    info = {"id": "msg_1", "created_at": 1764000000, "reasoning": "thinking", "usage": {"total_tokens": 3}}
    out = message_object(StoredMessage(orjson.dumps(replay), orjson.dumps(info)))
    assert out == {
        "id": "msg_1",
        "object": "session.message",
        **replay,
        "created_at": 1764000000,
        "reasoning": "thinking",
    }


def test_message_object_without_reasoning() -> None:
    replay = {"role": "user", "content": "hi", "name": "bob"}
    out = message_object(StoredMessage(orjson.dumps(replay), orjson.dumps({"id": "msg_2", "created_at": 7})))
    assert out == {
        "id": "msg_2",
        "object": "session.message",
        "role": "user",
        "content": "hi",
        "name": "bob",
        "created_at": 7,
    }


def test_session_object() -> None:
    record = SessionRecord(
        id="s1",
        status="active",
        title="Hello",
        message_count=2,
        created_at=100,
        last_active_at=200,
        expires_at=None,
        metadata={"k": "v"},
        usage={"total_tokens": 9},
    )
    assert session_object(record) == {
        "id": "s1",
        "object": "session",
        "status": "active",
        "title": "Hello",
        "message_count": 2,
        "created_at": 100,
        "last_active_at": 200,
        "expires_at": None,
        "expires_after": None,
        "rate_limits": {"max_requests_per_1_minute": None},
        "max_requests": None,
        "request_count": 0,
        "history_window": None,
        "namespace": None,
        "metadata": {"k": "v"},
        "usage": {"total_tokens": 9},
    }
    assert list(session_object(record))[:2] == ["id", "object"]
