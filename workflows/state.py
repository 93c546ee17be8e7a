"""``ConnectState``: the durable state of one connector, pure and deterministic (no temporalio import).

It owns the two cursors, the rows fetched but not yet committed, the conversation lanes, the dedupe window, the dead
letters and the counters. ``ConnectWorkflow`` mutates it only through these methods, and carries it whole through
continue-as-new, so every rule about what is delivered, skipped or committed lives here and is unit-testable.

Cursor rules (PROTOCOL.md §8, DESIGN.md §2):
- the **fetch cursor** is the last row read from the inbox; the poll runs ahead from it;
- the **commit cursor** is the last row of the longest fully *settled* prefix of fetched rows (settled = replied,
  skipped or dead-lettered); it never passes an unsettled row.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from activities.messages import PolledRow, PollResult, ReplyPart, RowPointer

DEDUPE_WINDOW = 5000
"""Row ids and message ids remembered after settling: far more than one poll batch (≤ 500) or a 410 re-read."""
DEAD_LETTER_LIMIT = 200
"""Dead letters kept; older ones are evicted and counted."""
DEAD_LETTER_BYTES = 512 * 1024
"""Dead letters kept, in JSON bytes. They are carried through continue-as-new, whose input must stay under Temporal's
2 MiB payload limit or every workflow task fails; so the oldest are evicted beyond this, even the newest when it alone
is larger (a large message: its sender was still told)."""

SettleReason = Literal["replied", "skipped", "dead_lettered", "duplicate", "discarded"]


def lane_of(row: PolledRow) -> str:
    """The conversation a row belongs to (PROTOCOL.md §7): ``contextId``, else the sender, else ``canvas``."""
    if row.message is not None and row.message.context_id:
        return f"ctx:{row.message.context_id}"
    if row.source_id:
        return f"peer:{row.source_id}"
    return "canvas"


class StateModel(BaseModel):
    """Base of state models: mutable, strict, JSON-friendly."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Counters(StateModel):
    """Monotonic counters, carried through continue-as-new."""

    received: int = 0
    """Rows fetched that were new (not duplicates)."""
    replied: int = 0
    """Messages answered (backend reply accepted by the platform)."""
    skipped: int = 0
    """Rows settled without dispatch (PROTOCOL.md §4 skip rules, ping-pong guard)."""
    duplicates: int = 0
    """Rows or messageIds seen again and dropped by the dedupe window."""
    dead_lettered: int = 0
    """Messages set aside after failing."""
    redriven: int = 0
    """Dead letters put back into their lane."""
    cursor_resets: int = 0
    """Times the cursor was lost (410) and recovered."""
    continued_as_new: int = 0
    """Runs this connector has continued as new."""


class DeadLetter(StateModel):
    """A message set aside after failing (PROTOCOL.md §8): enough to tell the operator and to redrive it."""

    row: PolledRow
    """The inbound row, with its message."""
    lane: str
    error: str
    """The last error, one line."""
    stage: Literal["parse", "dispatch", "reply"]
    """Where it failed: a malformed body, the backend, or sending the reply."""
    attempts: int
    first_failed_at: datetime
    dead_lettered_at: datetime
    reply_parts: list[ReplyPart] | None = None
    """For ``stage == "reply"``: the backend's answer, so a redrive re-sends it without re-running the backend."""


class PendingMessage(StateModel):
    """A fetched message waiting in its lane (or in flight)."""

    row: PolledRow
    lane: str
    reply_parts: list[ReplyPart] | None = None
    """Set when the message is redriven after a reply failure: skip the backend, only send this."""


class FetchedRow(StateModel):
    """A fetched row not yet behind the commit cursor."""

    pointer: RowPointer
    settled: bool = False


class ConnectState(StateModel):
    """Everything a connector must not forget. See the module docstring for the cursor rules."""

    fetch_cursor: RowPointer | None = None
    commit_cursor: RowPointer | None = None
    seeded: bool = False
    """The cold start happened (``start_from`` no longer applies)."""
    not_before: datetime | None = None
    """After a reset without a cursor: rows older than this are not new."""
    uncommitted: list[FetchedRow] = Field(default_factory=list)
    """Fetched rows from the first unsettled one on, in arrival order."""
    pending: list[PendingMessage] = Field(default_factory=list)
    """Messages to deliver, in arrival order (lanes are derived from it)."""
    recent_row_ids: list[str] = Field(default_factory=list)
    """Dedupe window of row ids (fetched, settled or not), oldest first."""
    recent_message_ids: list[str] = Field(default_factory=list)
    """Dedupe window of ``<sender>/<messageId>`` keys, oldest first."""
    dead_letters: list[DeadLetter] = Field(default_factory=list)
    dead_letters_evicted: int = 0
    counters: Counters = Field(default_factory=Counters)
    last_delivery_at: datetime | None = None
    last_error: str | None = None
    paused: bool = False
    """Paused by an operator (``pause``): no polling, no new dispatches; survives continue-as-new."""
    reseed: bool = False
    """``set_cursor latest`` was asked: the next poll seeds at the newest row whatever ``start_from`` says."""

    _row_ids: set[str] = PrivateAttr(default_factory=set)
    _message_ids: set[str] = PrivateAttr(default_factory=set)

    def model_post_init(self, __context: object) -> None:
        """Rebuild the lookup sets from the carried windows."""
        self._row_ids = set(self.recent_row_ids)
        self._message_ids = set(self.recent_message_ids)

    # --- dedupe -----------------------------------------------------------------------------------------------

    def _remember(self, window: list[str], index: set[str], key: str) -> None:
        window.append(key)
        index.add(key)
        if len(window) > DEDUPE_WINDOW:
            for old in window[: len(window) - DEDUPE_WINDOW]:
                index.discard(old)
            del window[: len(window) - DEDUPE_WINDOW]

    @staticmethod
    def _message_key(row: PolledRow) -> str | None:
        if row.message is None:
            return None
        return f"{row.source_id or 'canvas'}/{row.message.message_id}"

    # --- ingest -----------------------------------------------------------------------------------------------

    def ingest(self, result: PollResult) -> list[tuple[PolledRow, str]]:
        """Take one poll result: remember rows, move the fetch cursor, queue messages.

        Args:
            result: Rows oldest first, as ``poll`` returned them.

        Returns:
            ``(row, reason)`` for rows settled at once that the workflow must act on: ``malformed`` rows to
            dead-letter. (Skips and duplicates are settled here.)
        """
        if result.cold_start_done:
            self.seeded = True
            self.reseed = False
        if result.seed is not None:
            self.fetch_cursor = result.seed
            if not self.uncommitted:
                self.commit_cursor = result.seed
            self._remember(self.recent_row_ids, self._row_ids, result.seed.row_id)
        if result.cursor_reset:
            self.counters.cursor_resets += 1
            if self.fetch_cursor is not None:
                self.not_before = self.fetch_cursor.created_at or self.not_before
            self.fetch_cursor = None
        to_dead_letter: list[tuple[PolledRow, str]] = []
        for row in result.rows:
            self.fetch_cursor = row.pointer
            if row.row_id in self._row_ids:
                self.counters.duplicates += 1
                continue
            self._remember(self.recent_row_ids, self._row_ids, row.row_id)
            self.counters.received += 1
            self.uncommitted.append(FetchedRow(pointer=row.pointer))
            if row.outcome == "skip":
                self.counters.skipped += 1
                self.settle(row.row_id)
            elif row.outcome == "malformed":
                to_dead_letter.append((row, row.reason or "malformed request body"))
            else:
                key = self._message_key(row)
                if key is not None and key in self._message_ids:
                    self.counters.duplicates += 1
                    self.settle(row.row_id)
                    continue
                if key is not None:
                    self._remember(self.recent_message_ids, self._message_ids, key)
                self.pending.append(PendingMessage(row=row, lane=lane_of(row)))
        return to_dead_letter

    # --- settle / commit --------------------------------------------------------------------------------------

    def settle(self, row_id: str) -> None:
        """Mark a row settled and advance the commit cursor over the settled prefix."""
        self.pending = [p for p in self.pending if p.row.row_id != row_id]
        for fetched in self.uncommitted:
            if fetched.pointer.row_id == row_id:
                fetched.settled = True
                break
        while self.uncommitted and self.uncommitted[0].settled:
            self.commit_cursor = self.uncommitted.pop(0).pointer
        if not self.uncommitted and self.fetch_cursor is not None:
            self.commit_cursor = self.fetch_cursor

    def record_reply(self, row_id: str, at: datetime) -> None:
        """A reply was accepted by the platform: settle and count it."""
        self.counters.replied += 1
        self.last_delivery_at = at
        self.settle(row_id)

    def record_skip(self, row_id: str) -> None:
        """Settle a row without dispatch (e.g. the ping-pong guard)."""
        self.counters.skipped += 1
        self.settle(row_id)

    def set_cursor(self, pointer: RowPointer | None) -> None:
        """Continue polling after ``pointer``, or at the newest row when ``None`` (operator's ``set_cursor``).

        Fetched messages stay queued; the commit cursor only follows once they settle. A rewind redelivers nothing
        already seen: the dedupe window drops it.
        """
        self.fetch_cursor = pointer
        self.not_before = None
        self.reseed = pointer is None
        if pointer is None:
            self.seeded = False
        if not self.uncommitted and pointer is not None:
            self.commit_cursor = pointer

    # --- dead letters -----------------------------------------------------------------------------------------

    def dead_letter(self, letter: DeadLetter) -> None:
        """Set a message aside and settle its row; evict the oldest letters beyond the count or byte limit."""
        self.dead_letters = [d for d in self.dead_letters if d.row.row_id != letter.row.row_id]
        self.dead_letters.append(letter)
        if len(self.dead_letters) > DEAD_LETTER_LIMIT:
            self.dead_letters_evicted += len(self.dead_letters) - DEAD_LETTER_LIMIT
            del self.dead_letters[: len(self.dead_letters) - DEAD_LETTER_LIMIT]
        sizes = [len(d.model_dump_json()) for d in self.dead_letters]
        evict, total = 0, sum(sizes)
        while total > DEAD_LETTER_BYTES:
            total -= sizes[evict]
            evict += 1
        if evict:
            self.dead_letters_evicted += evict
            del self.dead_letters[:evict]
        self.counters.dead_lettered += 1
        self.last_error = letter.error
        self.settle(letter.row.row_id)

    def take_dead_letters(self, row_id: str | None) -> list[DeadLetter]:
        """Remove and return the dead letter with ``row_id``, or all of them when ``row_id`` is ``None``."""
        taken = [d for d in self.dead_letters if row_id is None or d.row.row_id == row_id]
        self.dead_letters = [d for d in self.dead_letters if d not in taken]
        return taken

    def redrive(self, letters: list[DeadLetter]) -> None:
        """Put dead letters back at the end of their lanes (the commit cursor does not move back)."""
        for letter in letters:
            if letter.row.outcome != "deliver":
                continue
            self.pending.append(
                PendingMessage(
                    row=letter.row,
                    lane=letter.lane,
                    reply_parts=letter.reply_parts if letter.stage == "reply" else None,
                )
            )
            self.counters.redriven += 1

    # --- views ------------------------------------------------------------------------------------------------

    def lane_queues(self) -> dict[str, deque[PendingMessage]]:
        """Pending messages grouped by lane, each in arrival order; lanes in order of their oldest message."""
        lanes: dict[str, deque[PendingMessage]] = {}
        for message in self.pending:
            lanes.setdefault(message.lane, deque()).append(message)
        return lanes

    def next_in_lane(self, lane: str) -> PendingMessage | None:
        """The oldest pending message of ``lane``."""
        return next((p for p in self.pending if p.lane == lane), None)
