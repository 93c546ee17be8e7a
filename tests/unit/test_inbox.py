"""Decoding inbox answers row by row: one hostile row never hides the others (docs/protocol.md §3.3, §8)."""

from __future__ import annotations

import orjson
import pytest

from activities.inbox import InboxFormatError, decode_inbox, row_to_polled, rows_to_polled
from tests.unit.test_platform_activities import inbox_row, row_id

DEEP = "[" * 1500 + "]" * 1500


def raw_row(n: int, body_json: str) -> bytes:
    """An inbox row whose request_body is the given raw JSON text."""
    fields = orjson.dumps({k: v for k, v in inbox_row(n).items() if k != "request_body"})
    return fields[:-1] + b',"request_body":' + body_json.encode() + b"}"


def answer(*rows: bytes) -> bytes:
    return b"[" + b",".join(rows) + b"]"


def good(n: int) -> bytes:
    return orjson.dumps(inbox_row(n))


def test_decode_inbox_plain_array_is_decoded_whole() -> None:
    rows = decode_inbox(answer(good(1), good(2)))
    assert [r.fields["id"] for r in rows] == [row_id(1), row_id(2)] and all(r.problem is None for r in rows)


@pytest.mark.parametrize("body", [DEEP, '{"text": "\\ud800"}'], ids=["deep", "lone-surrogate"])
def test_decode_inbox_hostile_body_loses_only_that_field(body: str) -> None:
    rows = decode_inbox(answer(good(1), raw_row(2, body), good(3)))
    assert [r.fields["id"] for r in rows] == [row_id(1), row_id(2), row_id(3)]
    assert rows[0].problem is None and rows[2].problem is None
    hostile = rows[1]
    assert hostile.problem is not None and "request_body" in hostile.problem
    assert "request_body" not in hostile.fields and hostile.fields["method"] == "message/send"
    polled = rows_to_polled(rows, read_after=None)
    assert [p.outcome for p in polled] == ["deliver", "malformed", "deliver"]
    assert polled[1].reason is not None and polled[1].reason.startswith("unreadable row")
    assert polled[2].body_ref is None  # carried whole; predecessor bookkeeping unaffected


def test_decode_inbox_strings_with_brackets_and_escapes_do_not_confuse_the_split() -> None:
    tricky = raw_row(2, '{"text": "a ] } , \\" [ {", "x": "\\ud800"}')
    rows = decode_inbox(answer(good(1), tricky, good(3)))
    assert [r.fields["id"] for r in rows] == [row_id(1), row_id(2), row_id(3)]


@pytest.mark.parametrize("content", [b"<html>bad gateway</html>", b'{"error": "x"}', b"[1, 2", b'"text"'])
def test_decode_inbox_not_an_array_raises(content: bytes) -> None:
    with pytest.raises(InboxFormatError):
        decode_inbox(content)


def test_row_to_polled_non_uuid_id_is_skipped_not_a_cursor() -> None:
    polled = row_to_polled({**inbox_row(1), "id": "row-7"})
    assert polled.outcome == "skip" and "not a UUID" in (polled.reason or "")
    assert not polled.pointer.usable
