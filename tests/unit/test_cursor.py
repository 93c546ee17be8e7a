"""Cursor: one test per transition of its event × effect table (workflows/cursor.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from activities.messages import PolledRow, PollResult, RowPointer
from workflows.cursor import UNUSABLE_REMEMBERED, Cursor

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def rid(n: int) -> str:
    return str(uuid.UUID(int=n))


def row(n: int, *, row_id: str | None = None) -> PolledRow:
    return PolledRow(row_id=row_id or rid(n), created_at=T0 + timedelta(seconds=n), outcome="skip")


def point(n: int) -> RowPointer:
    return RowPointer(row_id=rid(n), created_at=T0 + timedelta(seconds=n))


def test_read_cold_start_latest_seeds_both_cursors() -> None:
    cursor = Cursor()
    assert not cursor.read(PollResult(seed=point(9), cold_start_done=True))
    assert cursor.seeded and cursor.fetch == point(9) and cursor.commit == point(9)


def test_read_cold_start_latest_with_unsettled_rows_keeps_commit() -> None:
    cursor = Cursor(seeded=True)
    cursor.fetched(row(1))
    cursor.read(PollResult(seed=point(9), cold_start_done=True))
    assert cursor.fetch == point(9) and cursor.commit is None


def test_read_cold_start_empty_inbox_is_seeded_without_cursor() -> None:
    cursor = Cursor(reseed=True)
    cursor.read(PollResult(cold_start_done=True))
    assert cursor.seeded and not cursor.reseed and cursor.fetch is None


def test_read_rows_move_fetch_to_the_last_uuid_row_and_remember_others() -> None:
    cursor = Cursor(seeded=True)
    cursor.read(PollResult(rows=[row(1), row(2), row(3, row_id="row-7")]))
    assert cursor.fetch == point(2)
    assert cursor.unusable_row_ids == ["row-7"]
    cursor.read(PollResult(rows=[row(4)]))
    assert cursor.fetch == point(4) and cursor.unusable_row_ids == []


def test_read_unusable_rows_remembered_are_bounded() -> None:
    cursor = Cursor(seeded=True)
    cursor.read(PollResult(rows=[row(n, row_id=f"row-{n}") for n in range(UNUSABLE_REMEMBERED + 5)]))
    assert len(cursor.unusable_row_ids) == UNUSABLE_REMEMBERED and cursor.unusable_row_ids[0] == "row-5"


def test_read_cursor_reset_clears_fetch_and_floors_at_the_lost_cursor_time() -> None:
    cursor = Cursor(seeded=True, fetch=point(5))
    assert cursor.read(PollResult(rows=[row(6)], cursor_reset=True))
    assert cursor.not_before == point(5).created_at and cursor.fetch == point(6)


def test_settle_moves_commit_over_the_settled_prefix_only() -> None:
    cursor = Cursor(seeded=True)
    for n in (1, 2, 3):
        cursor.passed(row(n))
        cursor.fetched(row(n))
    cursor.settle(rid(2))
    assert cursor.commit is None
    cursor.settle(rid(1))
    assert cursor.commit == point(2)
    cursor.settle(rid(3))
    assert cursor.commit == point(3) and cursor.uncommitted == []


def test_settle_skips_unusable_rows_as_commit_positions() -> None:
    cursor = Cursor(seeded=True, fetch=point(1), commit=point(1))
    weird = row(2, row_id="row-2")
    cursor.passed(weird)
    cursor.fetched(weird)
    cursor.settle("row-2")
    assert cursor.commit == point(1)


def test_set_by_operator_row_moves_fetch_and_keeps_the_settled_floor() -> None:
    cursor = Cursor(seeded=True, fetch=point(5), commit=point(5))
    cursor.set_by_operator(point(2))
    assert cursor.fetch == point(2) and cursor.commit == point(2)
    assert cursor.not_before == point(5).created_at  # a 410 on the new cursor re-delivers nothing settled


def test_set_by_operator_latest_asks_for_a_reseed() -> None:
    cursor = Cursor(seeded=True, fetch=point(5), commit=point(5))
    cursor.set_by_operator(None)
    assert cursor.fetch is None and cursor.reseed and not cursor.seeded
    assert cursor.read_input("backlog", target={"workspace_id": "w", "platform_url": "http://p"}).start_from == "latest"


def test_set_by_operator_with_unsettled_rows_leaves_commit_behind() -> None:
    cursor = Cursor(seeded=True, fetch=point(5), commit=point(4))
    cursor.fetched(row(5))
    cursor.set_by_operator(point(9))
    assert cursor.fetch == point(9) and cursor.commit == point(4)
