"""``POST /admin/workspaces/{id}/rows``: hostile rows a real platform could return, served verbatim."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from devplatform.client import PlatformRequestError
from devplatform.db import _ROW_COLUMNS, Database
from devplatform.records import ActivityRow, NewRow
from tests.devplatform.harness import Harness, bearer

DEPTH = 1500
DEEP_BODY = '{"jsonrpc":"2.0","method":"message/send","params":' + "[" * DEPTH + "]" * DEPTH + "}"
SURROGATE_BODY = (
    '{"jsonrpc":"2.0","method":"message/send","params":{"message":{"role":"user","messageId":"m-1",'
    '"parts":[{"kind":"text","text":"\\ud800"}]}}}'
)


async def test_deep_body_served_verbatim_and_deep(platform: Harness) -> None:
    """orjson refuses > 1024 levels, so only a body kept as text can come out 1,500 deep."""
    ws = await platform.workspace()
    row_id = await platform.admin.insert_raw_row(ws.id, request_body_json=DEEP_BODY)

    response = await platform.poll(ws)

    assert response.status_code == 200
    assert b'"request_body":' + DEEP_BODY.encode() + b"}" in response.content
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)
    assert row_id in response.text


async def test_lone_surrogate_escape_served_as_six_characters(platform: Harness) -> None:
    ws = await platform.workspace()
    await platform.admin.insert_raw_row(ws.id, request_body_json=SURROGATE_BODY, source_id=None)

    response = await platform.poll(ws)

    assert response.status_code == 200
    assert b'"text":"\\ud800"' in response.content
    # A lenient parser reads the lone surrogate; a strict one (orjson) refuses the whole answer.
    [row] = json.loads(response.content)
    assert row["request_body"]["params"]["message"]["parts"][0]["text"] == "\ud800"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)


async def test_non_uuid_row_at_head_and_cursor_semantics(platform: Harness) -> None:
    """since_id=<row before it> returns it; since_id=<its id> is the platform's 500 (docs/protocol.md §3.3)."""
    ws, peer = await platform.workspace("me"), await platform.workspace("peer")
    await platform.send_text(ws.id, "before", sender=peer)
    [before] = await platform.admin.rows(ws.id)
    body = orjson.dumps({"jsonrpc": "2.0", "method": "message/send", "params": {"x": 1}}).decode()
    assert await platform.admin.insert_raw_row(ws.id, request_body_json=body, id="row-7", source_id=peer.id) == (
        "row-7"
    )

    head = (await platform.poll(ws)).json()
    assert [row["id"] for row in head] == ["row-7", before["id"]]
    assert head[0]["source_id"] == peer.id
    assert head[0]["method"] == "message/send"
    assert head[0]["request_body"] == {"jsonrpc": "2.0", "method": "message/send", "params": {"x": 1}}

    after_before = await platform.poll(ws, since_id=before["id"])
    assert [row["id"] for row in after_before.json()] == ["row-7"]

    at_bad = await platform.poll(ws, since_id="row-7")
    assert (at_bad.status_code, at_bad.json()) == (500, {"error": "cursor lookup failed"})

    await platform.send_text(ws.id, "after", sender=peer)
    later = (await platform.poll(ws, since_id=before["id"])).json()
    assert [row["id"] for row in later][0] == "row-7"
    assert later[1]["request_body"]["params"]["message"]["parts"][0]["text"] == "after"


async def test_normal_rows_unchanged_next_to_raw_rows(platform: Harness) -> None:
    ws, peer = await platform.workspace("me"), await platform.workspace("peer")
    await platform.send_text(ws.id, "plain", sender=peer)
    alone = (await platform.poll(ws)).content

    await platform.admin.insert_raw_row(ws.id, request_body_json=SURROGATE_BODY)

    mixed = (await platform.poll(ws, since_secs=3600)).content
    assert mixed.endswith(alone[1:])
    assert orjson.loads(alone)[0]["request_body"]["params"]["message"]["parts"][0]["text"] == "plain"


async def test_raw_row_fields_and_created_at(platform: Harness) -> None:
    ws = await platform.workspace()
    stamp = datetime(2099, 1, 1, tzinfo=UTC)
    row_id = await platform.admin.insert_raw_row(
        ws.id,
        request_body_json="[1, 2]",
        method="tasks/get",
        status="error",
        created_at=stamp,
        summary="hostile",
    )
    await platform.send_text(ws.id, "next")

    rows = await platform.admin.rows(ws.id)
    assert [row["id"] for row in rows][0] == row_id
    raw = rows[0]
    assert (raw["method"], raw["status"], raw["summary"], raw["source_id"], raw["target_id"]) == (
        "tasks/get",
        "error",
        "hostile",
        None,
        ws.id,
    )
    assert raw["created_at"] == "2099-01-01T00:00:00.000000Z"
    assert raw["request_body_json"] == "[1, 2]" and "request_body" not in raw
    # created_at never goes backwards: the row sent after it is not older.
    assert rows[1]["created_at"] >= raw["created_at"]
    # Stored and served verbatim, spaces included.
    assert b'"request_body":[1, 2]' in (await platform.poll(ws)).content


async def test_admin_rows_view_stays_readable_with_hostile_rows(platform: Harness) -> None:
    """The inbox serves hostile bodies verbatim; the admin view gives their text, so its client still parses."""
    ws, peer = await platform.workspace(), await platform.workspace()
    await platform.admin.insert_raw_row(ws.id, request_body_json=DEEP_BODY)
    await platform.admin.insert_raw_row(ws.id, request_body_json=SURROGATE_BODY, id="row-7")
    await platform.send_text(ws.id, "plain", sender=peer)

    deep, surrogate, plain = await platform.admin.rows(ws.id)

    assert (deep["request_body_json"], surrogate["request_body_json"]) == (DEEP_BODY, SURROGATE_BODY)
    assert plain["request_body"]["params"]["message"]["parts"][0]["text"] == "plain"


async def test_raw_row_admin_only_unknown_workspace_duplicate_id(platform: Harness) -> None:
    ws = await platform.workspace()
    denied = await platform.http.post(
        f"/admin/workspaces/{ws.id}/rows", json={"request_body_json": "{}"}, headers=bearer(ws.token)
    )
    assert denied.status_code in (401, 403)

    with pytest.raises(PlatformRequestError) as unknown:
        await platform.admin.insert_raw_row("00000000-0000-0000-0000-000000000000", request_body_json="{}")
    assert unknown.value.status_code == 404

    await platform.admin.insert_raw_row(ws.id, request_body_json="{}", id="row-7")
    with pytest.raises(PlatformRequestError) as duplicate:
        await platform.admin.insert_raw_row(ws.id, request_body_json="{}", id="row-7")
    assert duplicate.value.status_code == 409


def test_database_from_before_raw_rows_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    Database(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE activity_rows DROP COLUMN raw_request_body")
    conn.close()

    db = Database(path)
    ws = db.create_workspace("w", None)
    new = NewRow(workspace_id=ws.id, activity_type="a2a_receive", method="message/send")
    row = db.insert_raw_row(new, "{}", row_id="row-1")
    assert row is not None
    assert db.get_row(ws.id, "row-1") == row
    assert db.insert_raw_row(new, "{}", row_id="row-1") is None
    db.close()


def test_row_columns_in_activity_row_field_order() -> None:
    """Rows are read positionally (the inbox's hot path), so the SELECT list must follow the record."""
    names = [name.strip() for name in _ROW_COLUMNS.split(",")]
    assert names == [field.name for field in fields(ActivityRow)] + ["raw_request_body"]
