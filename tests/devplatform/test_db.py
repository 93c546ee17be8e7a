"""Database functions, apart from the routes."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from devplatform.db import Database, hash_token
from devplatform.records import InboxQuery, NewRow
from tests.devplatform.harness import ROW_TIMESTAMP, FakeClock


@pytest.fixture
def db(tmp_path: Path, clock: FakeClock):
    database = Database(tmp_path / "db.sqlite", clock=clock)
    yield database
    database.close()


def add(db: Database, workspace_id: str, text: str, message_id: str | None = None):
    row, _ = db.insert_row(
        NewRow(workspace_id=workspace_id, activity_type="a2a_receive", method="message/send",
               message_id=message_id, request_body={"text": text})
    )  # fmt: skip
    return row


def status(db: Database, workspace_id: str) -> str:
    record = db.get_workspace(workspace_id)
    assert record is not None
    return record.status


def test_db_wal_mode_and_token_stored_hashed(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db")
    ws = db.create_workspace("w", hash_token("secret"))
    assert db._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ws.token_hash != "secret"
    assert db.workspace_by_token_hash(hash_token("secret")) == ws
    db.close()


def test_db_created_at_never_goes_backwards(db: Database, clock: FakeClock) -> None:
    ws = db.create_workspace("w", None)
    first = add(db, ws.id, "a")
    clock.advance(-10)
    second = add(db, ws.id, "b")
    assert re.match(ROW_TIMESTAMP, first.created_at)
    assert second.created_at == first.created_at
    assert second.seq > first.seq
    assert [r.request_body["text"] for r in db.list_rows(ws.id, InboxQuery(after=first))] == ["b"]


def test_db_created_at_monotonic_across_reopen(tmp_path: Path, clock: FakeClock) -> None:
    db = Database(tmp_path / "r.db", clock=clock)
    ws = db.create_workspace("w", None)
    first = add(db, ws.id, "a")
    db.close()
    clock.advance(-60)
    reopened = Database(tmp_path / "r.db", clock=clock)
    assert add(reopened, ws.id, "b").created_at >= first.created_at
    reopened.close()


def test_db_insert_same_message_id_returns_existing(db: Database) -> None:
    ws = db.create_workspace("w", None)
    first = add(db, ws.id, "a", message_id="m")
    again, created = db.insert_row(NewRow(workspace_id=ws.id, activity_type="a2a_receive", message_id="m"))
    assert not created
    assert again.id == first.id
    assert db.all_rows(ws.id)[0].duplicates == 1


def test_db_list_rows_desc_without_cursor_asc_with(db: Database, clock: FakeClock) -> None:
    ws = db.create_workspace("w", None)
    rows = []
    for text in "abcd":
        rows.append(add(db, ws.id, text))
        clock.advance(1)
    assert [r.request_body["text"] for r in db.list_rows(ws.id, InboxQuery(limit=3))] == ["d", "c", "b"]
    assert [r.request_body["text"] for r in db.list_rows(ws.id, InboxQuery(after=rows[1]))] == ["c", "d"]
    since = clock.now - timedelta(seconds=2.5)
    assert [r.request_body["text"] for r in db.list_rows(ws.id, InboxQuery(since=since))] == ["d", "c"]


def test_db_get_row_scoped_to_workspace(db: Database) -> None:
    a, b = db.create_workspace("a", None), db.create_workspace("b", None)
    row = add(db, a.id, "x")
    assert db.get_row(a.id, row.id) == row
    assert db.get_row(b.id, row.id) is None


def test_db_prune_before_row_strictly_older(db: Database) -> None:
    ws = db.create_workspace("w", None)
    rows = [add(db, ws.id, t) for t in "abc"]
    assert db.prune(workspace_id=ws.id, before=rows[1]) == 1
    assert [r.id for r in db.all_rows(ws.id)] == [rows[1].id, rows[2].id]


def test_db_sweep_only_external_online_or_degraded(db: Database, clock: FakeClock) -> None:
    online = db.create_workspace("online", None)
    db.register(online.id, delivery_mode="poll", url=None, agent_card={})
    waiting = db.create_workspace("waiting", None)
    clock.advance(100)
    assert db.sweep_stale(clock.now - timedelta(seconds=90)) == [online.id]
    assert status(db, online.id) == status(db, waiting.id) == "awaiting_agent"


def test_db_register_removed_not_resurrected(db: Database) -> None:
    ws = db.create_workspace("w", None)
    db.remove_workspace(ws.id)
    assert db.register(ws.id, delivery_mode="poll", url=None, agent_card={}).status == "removed"
