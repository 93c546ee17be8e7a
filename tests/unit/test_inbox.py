"""Decoding inbox answers row by row: one hostile row never hides the others (docs/protocol.md §3.3, §8); what each
row becomes for the workflow: delivered, skipped by the skip rules, or malformed (§4)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from activities.inbox import MAX_QUOTED_CHARS, InboxFormatError, decode_inbox, row_to_polled, rows_to_polled
from activities.messages import RowPointer
from tests.unit.platform.fake_platform import PEER, at, inbox_row, row_id

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


# --- row_to_polled: skip rules (docs/protocol.md §4) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (
            {"method": "notify", "source_id": None, "response_body": {"result": "hi"}},
            "own canvas reply (notify echo)",
        ),
        ({"status": "error"}, "row status is error"),
        ({"response_body": {"result": "done"}}, "already answered (push delivery)"),
        ({"method": "tasks/get"}, "unknown method 'tasks/get'"),
        ({"method": None}, "unknown method None"),
        ({"request_body": None}, "no request_body"),
        ({"activity_type": "a2a_send"}, "activity_type 'a2a_send' is not a2a_receive"),
    ],
)
def test_row_to_polled_skip_rules_give_reason(overrides: dict[str, Any], reason: str) -> None:
    polled = row_to_polled(inbox_row(1, **overrides))
    assert polled.outcome == "skip"
    assert polled.reason == reason
    assert polled.message is None
    assert polled.row_id == row_id(1)


def test_row_to_polled_huge_method_is_clipped_in_row_and_reason() -> None:
    """The sender picks the method: a huge one must not grow a poll result past Temporal's payload limit."""
    polled = row_to_polled(inbox_row(1, method="m" * (1 << 20)))
    assert polled.outcome == "skip"
    assert polled.method is not None and len(polled.method) == MAX_QUOTED_CHARS
    assert polled.reason is not None and len(polled.reason) == MAX_QUOTED_CHARS


def test_row_to_polled_request_body_absent_is_skipped() -> None:
    row = inbox_row(1)
    del row["request_body"]
    polled = row_to_polled(row)
    assert (polled.outcome, polled.reason, polled.body_bytes) == ("skip", "no request_body", 0)


def test_row_to_polled_malformed_body_is_malformed_with_reason() -> None:
    body = {"jsonrpc": "2.0", "id": "1", "method": "message/send", "params": {"message": {"content": 5}}}
    polled = row_to_polled(inbox_row(1, request_body=body))
    assert polled.outcome == "malformed"
    assert polled.reason == "invalid params.message.content type"
    assert polled.message is None


def test_row_to_polled_body_without_usable_parts_is_malformed() -> None:
    body = {
        "jsonrpc": "2.0",
        "id": "1",
        "method": "message/send",
        "params": {"message": {"parts": [{"kind": "x"}]}},
    }
    polled = row_to_polled(inbox_row(1, request_body=body))
    assert polled.outcome == "malformed"
    assert polled.reason == "no usable parts (1 unsupported)"


def test_row_to_polled_deliverable_row_is_parsed() -> None:
    raw = inbox_row(4, text="ping")
    polled = row_to_polled(raw)
    assert polled.outcome == "deliver"
    assert polled.reason is None
    assert polled.row_id == row_id(4)
    assert polled.created_at == at(4)
    assert polled.source_id == PEER
    assert polled.method == "message/send"
    assert polled.text == "ping"
    assert polled.message is not None and polled.message.message_id == "msg-4"
    assert polled.message.context_id == "ctx-4"
    assert polled.body_bytes == len(orjson.dumps(raw["request_body"]))
    assert polled.auto_reply_depth == 0
    assert polled.pointer == RowPointer(row_id=row_id(4), created_at=at(4))


def test_row_to_polled_message_stream_is_delivered() -> None:
    assert row_to_polled(inbox_row(1, method="message/stream")).outcome == "deliver"


def test_row_to_polled_canvas_row_has_no_source() -> None:
    polled = row_to_polled(inbox_row(1, source=None))
    assert polled.outcome == "deliver" and polled.source_id is None


def test_row_to_polled_bad_created_at_is_none() -> None:
    assert row_to_polled(inbox_row(1, created_at="yesterday")).created_at is None


def test_row_to_polled_legacy_body_is_normalized() -> None:
    body = {"method": "message/send", "params": {"message": {"content": [{"type": "text", "text": "old"}]}}}
    polled = row_to_polled(inbox_row(1, request_body=body))
    assert polled.outcome == "deliver" and polled.text == "old"


@pytest.mark.parametrize(
    ("metadata", "depth"),
    [
        ({"auto_reply_depth": 3}, 3),
        ({"auto_reply_depth": -1}, 0),
        ({"auto_reply_depth": "2"}, 0),
        ({}, 0),
        (None, 0),
    ],
)
def test_row_to_polled_auto_reply_depth_read_from_metadata(metadata: dict[str, Any] | None, depth: int) -> None:
    raw = inbox_row(1)
    if metadata is not None:
        raw["request_body"]["params"]["message"]["metadata"] = metadata
    assert row_to_polled(raw).auto_reply_depth == depth
