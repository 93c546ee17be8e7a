"""ConnectState: cursor, dedupe, lanes and dead letters, without Temporal."""

from __future__ import annotations

import uuid
import zlib
from datetime import UTC, datetime, timedelta

from activities.a2a import A2AMessage, TextPart
from activities.messages import PolledRow, PollResult, RowPointer
from workflows.messages import ConnectInput
from workflows.state import (
    DEAD_LETTER_LIMIT,
    DEDUPE_WINDOW,
    REPLY_PARTS_KEPT_TOTAL_BYTES,
    ConnectState,
    DeadLetter,
    lane_of,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def rid(n: int) -> str:
    """Row ids are UUIDs: only those can be cursors."""
    return f"00000000-0000-4000-8000-{n:012d}"


def row(n: int, *, context: str | None = "c1", source: str | None = "peer", outcome: str = "deliver") -> PolledRow:
    message = None
    if outcome == "deliver":
        message = A2AMessage(message_id=f"m{n}", context_id=context, parts=[TextPart(text=f"t{n}")])
    return PolledRow(
        row_id=rid(n),
        created_at=T0 + timedelta(seconds=n),
        source_id=source,
        method="message/send",
        outcome=outcome,  # type: ignore[arg-type]
        reason=None if outcome == "deliver" else "why",
        message=message,
        text=f"t{n}",
    )


def letter(polled: PolledRow, **fields: object) -> DeadLetter:
    """A dispatch-stage dead letter of ``polled`` in lane ``ctx:c1``; ``fields`` override."""
    base: dict[str, object] = {
        "row": polled,
        "lane": "ctx:c1",
        "error": "boom",
        "stage": "dispatch",
        "attempts": 5,
        "first_failed_at": T0,
        "dead_lettered_at": T0,
    }
    return DeadLetter.model_validate({**base, **fields})


def reply_letter(polled: PolledRow, answer: list[TextPart]) -> DeadLetter:
    """A reply-stage dead letter keeping ``answer`` for redrive."""
    return letter(polled, error="reply to peer: HTTP 400", stage="reply", attempts=1, reply_parts=answer)


def random_letter(n: int, *, context: str, sender: str) -> DeadLetter:
    """The ``n``-th reference letter with random row, cursor and message ids (what a worst case carries)."""
    return DeadLetter(
        row_id=str(uuid.uuid4()),
        read_after=str(uuid.uuid4()),
        created_at=T0 + timedelta(microseconds=n),
        lane=f"ctx:{context}",
        source_id=sender,
        message_id=str(uuid.uuid4()),
        error="exec: 'agent' exited with status 1: (stderr empty)",
        stage="dispatch",
        attempts=5,
        dead_lettered_at=T0 + timedelta(seconds=n),
    )


def test_ingest_skip_rows_settle_and_commit_cursor_follows() -> None:
    state = ConnectState(seeded=True)
    state.ingest(PollResult(rows=[row(1, outcome="skip"), row(2, outcome="skip")]))
    assert state.commit_cursor is not None and state.commit_cursor.row_id == rid(2)
    assert state.counters.skipped == 2 and not state.pending


def test_commit_cursor_waits_for_oldest_unsettled_row() -> None:
    """r2 settles before r1: the commit cursor must not pass r1."""
    state = ConnectState(seeded=True)
    state.ingest(PollResult(rows=[row(1, context="a"), row(2, context="b"), row(3, outcome="skip")]))
    assert state.fetch_cursor.row_id == rid(3)
    state.record_reply(rid(2), T0)
    assert state.commit_cursor is None
    state.record_reply(rid(1), T0)
    assert state.commit_cursor.row_id == rid(3)


def test_ingest_same_row_twice_is_a_duplicate() -> None:
    state = ConnectState(seeded=True)
    state.ingest(PollResult(rows=[row(1)]))
    state.record_reply(rid(1), T0)
    state.ingest(PollResult(rows=[row(1)], cursor_reset=True))
    assert state.counters.duplicates == 1 and not state.pending


def test_ingest_same_message_id_in_new_row_is_a_duplicate() -> None:
    state = ConnectState(seeded=True)
    state.ingest(PollResult(rows=[row(1)]))
    again = row(2).model_copy(update={"message": row(1).message})
    state.ingest(PollResult(rows=[again]))
    assert [p.row.row_id for p in state.pending] == [rid(1)]
    assert state.counters.duplicates == 1


def test_lanes_group_by_context_then_sender_then_canvas() -> None:
    assert lane_of(row(1, context="x")) == "ctx:x"
    assert lane_of(row(1, context=None, source="p")) == "peer:p"
    assert lane_of(row(1, context=None, source=None)) == "canvas"
    state = ConnectState(seeded=True)
    state.ingest(PollResult(rows=[row(1, context="a"), row(2, context="b"), row(3, context="a")]))
    lanes = state.lane_queues()
    assert list(lanes) == ["ctx:a", "ctx:b"]
    assert [p.row.row_id for p in lanes["ctx:a"]] == [rid(1), rid(3)]


def test_cursor_reset_keeps_created_at_floor() -> None:
    state = ConnectState(seeded=True)
    state.ingest(PollResult(rows=[row(5)]))
    state.ingest(PollResult(cursor_reset=True))
    assert state.fetch_cursor is None and state.cursor.not_before == T0 + timedelta(seconds=5)
    assert state.counters.cursor_resets == 1


def test_seed_sets_both_cursors() -> None:
    state = ConnectState()
    state.ingest(PollResult(seed=RowPointer(row_id=rid(9), created_at=T0), cold_start_done=True))
    assert state.cursor.seeded and state.commit_cursor.row_id == rid(9) and state.fetch_cursor.row_id == rid(9)


def test_dead_letters_are_never_evicted_and_full_is_reported() -> None:
    """Past the limit nothing is dropped: the state says it is full (the workflow then stops taking work)."""
    state = ConnectState(seeded=True)
    for n in range(DEAD_LETTER_LIMIT + 3):
        state.dead_letter(letter(row(n)))
    assert len(state.dead_letters) == DEAD_LETTER_LIMIT + 3 and state.dead_letters_full
    assert state.dead_letters_evicted == 0 and state.counters.dead_lettered == DEAD_LETTER_LIMIT + 3
    state.take_dead_letters(rid(0))
    state.take_dead_letters(rid(1))
    state.take_dead_letters(rid(2))
    state.take_dead_letters(rid(3))
    assert not state.dead_letters_full


def test_dead_letters_are_references_small_enough_for_ten_thousand() -> None:
    """A dead letter keeps no body: 10,000 of them carried through continue-as-new fit Temporal's 2 MiB limit."""
    import zlib

    state = ConnectState(seeded=True)
    for n in range(10_000):
        state.dead_letter(
            letter(row(n).model_copy(update={"text": "x" * 5000}), lane=f"ctx:c{n}", error=f"boom {n % 7}")
        )
    packed = zlib.compress(state.model_dump_json().encode(), 6)
    assert len(packed) < 1024 * 1024
    assert "xxxxx" not in state.model_dump_json()


def _carried_bytes(state: ConnectState) -> int:
    """The size of the continue-as-new input carrying ``state`` as ConnectWorkflow carries a large one."""
    carried = ConnectInput(
        workspace_id=str(uuid.uuid4()),
        platform_url="https://platform.example",
        packed_state=zlib.compress(state.model_dump_json().encode(), 6),
    )
    return len(carried.model_dump_json())


def _full_windows(state: ConnectState) -> None:
    window = [
        PolledRow(
            row_id=str(uuid.uuid4()),
            created_at=T0,
            source_id=str(uuid.uuid4()),
            method="message/send",
            outcome="deliver",
            message=A2AMessage(message_id=str(uuid.uuid4()), parts=[TextPart(text="t")]),
            text="t",
        )
        for _ in range(DEDUPE_WINDOW)
    ]
    state.ingest(PollResult(rows=window))
    for polled in window:
        state.record_reply(polled.row_id, T0)


def test_ten_thousand_dead_letters_fit_when_senders_and_conversations_repeat() -> None:
    """10,000 reference letters from 20 senders in 200 conversations, with full dedupe windows, carried as
    ConnectWorkflow carries them (``packed_state``: zlib, base64 in JSON), stay under Temporal's 2 MiB."""
    state = ConnectState(seeded=True)
    _full_windows(state)
    senders = [str(uuid.uuid4()) for _ in range(20)]
    contexts = [str(uuid.uuid4()) for _ in range(200)]
    for n in range(10_000):
        state.dead_letter(random_letter(n, context=contexts[n % 200], sender=senders[n % 20]))
    assert len(state.dead_letters) == 10_000
    assert _carried_bytes(state) <= 2 * 1024 * 1024


def test_dead_letters_with_every_id_random_are_full_before_the_payload_limit() -> None:
    """The worst case (every id a random UUID): the queue counts as full (new work stops) while the carried state
    still fits, instead of a continue-as-new that can never be written."""
    state = ConnectState(seeded=True)
    _full_windows(state)
    n = 0
    while not state.dead_letters_full:
        state.dead_letter(random_letter(n, context=str(uuid.uuid4()), sender=str(uuid.uuid4())))
        n += 1
    assert n > 7000
    assert _carried_bytes(state) <= 2 * 1024 * 1024 - 256 * 1024  # room left for queued bodies


def test_reply_stage_letters_keep_answers_only_within_a_total_budget() -> None:
    """However many replies fail, the answers kept for redrive stay within REPLY_PARTS_KEPT_TOTAL_BYTES (so the
    carried state fits a payload); the budget is freed when letters leave, and survives continue-as-new."""
    answer = [TextPart(text="a" * 15_000)]
    state = ConnectState(seeded=True)
    for n in range(100):
        state.dead_letter(reply_letter(row(n), answer))
    kept = [d for d in state.dead_letters if d.reply_parts is not None]
    assert 0 < len(kept) < 100
    assert sum(len(p.model_dump_json()) for d in kept for p in d.reply_parts or []) <= REPLY_PARTS_KEPT_TOTAL_BYTES
    assert len(state.dead_letters) == 100  # the others are kept too, without their answer
    carried = ConnectState.model_validate_json(state.model_dump_json())
    carried.take_dead_letters(kept[0].row_id)
    carried.dead_letter(reply_letter(row(200), answer))
    assert carried.dead_letters[-1].reply_parts == answer  # room made by the letter taken out


def test_redrive_puts_message_back_once() -> None:
    state = ConnectState(seeded=True)
    state.ingest(PollResult(rows=[row(1)]))
    state.dead_letter(letter(row(1)))
    assert not state.pending and state.commit_cursor.row_id == rid(1)
    state.redrive(state.take_dead_letters(rid(1)))
    assert [p.row.row_id for p in state.pending] == [rid(1)] and not state.dead_letters


def test_state_round_trips_through_json_for_continue_as_new() -> None:
    state = ConnectState(seeded=True)
    state.ingest(PollResult(rows=[row(1), row(2, context="b")]))
    state.record_reply(rid(2), T0)
    copy = ConnectState.model_validate_json(state.model_dump_json())
    assert copy.model_dump() == state.model_dump()
    copy.ingest(PollResult(rows=[row(2, context="b")]))
    assert copy.counters.duplicates == 1


def test_state_carried_by_an_older_connector_reads_its_cursor_fields() -> None:
    """Before the cursor was one object its fields sat at the top of the carried state; they still load."""
    older = {
        "fetch_cursor": {"row_id": rid(3), "created_at": T0.isoformat()},
        "commit_cursor": {"row_id": rid(2)},
        "seeded": True,
        "not_before": T0.isoformat(),
        "uncommitted": [{"pointer": {"row_id": rid(3)}, "settled": False}],
        "counters": {"received": 3},
    }
    state = ConnectState.model_validate(older)
    assert state.cursor.fetch is not None and state.cursor.fetch.row_id == rid(3)
    assert state.commit_cursor is not None and state.commit_cursor.row_id == rid(2)
    assert state.cursor.seeded and state.cursor.not_before == T0 and len(state.cursor.uncommitted) == 1
    assert state.counters.received == 3
