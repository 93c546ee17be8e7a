"""``ConnectState``: the durable state of one connector, pure and deterministic (no temporalio import).

It owns the cursor (``workflows.cursor``), the messages fetched but not yet settled and their conversation lanes, the
dedupe window, the dead letters, the ping-pong counts, the backend's health and the counters. ``ConnectWorkflow``
changes it only through these methods and carries it whole through continue-as-new, so every rule about what is
delivered, skipped or committed lives here (and in ``workflows.cursor``) and is unit-testable.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from activities.a2a import A2AMessage
from activities.messages import BodyRef, PolledRow, PollResult, ReplyPart, RowPointer
from workflows.cursor import Cursor
from workflows.outage import BackendHealth

DEDUPE_WINDOW = 2000
"""Row ids and message ids remembered after settling: four times one poll batch or a 410 re-read (≤ 500 rows)."""
DEAD_LETTER_LIMIT = 10_000
"""Dead letters kept per workspace. They are references (the body stays on the platform), never evicted: when the
limit is reached the connector stops taking new work (``blocked: dead-letter queue full``) until an operator redrives
or discards some (docs/guarantees.md)."""
REPLY_PARTS_KEPT_BYTES = 16 * 1024
"""A reply-stage dead letter keeps the backend's answer when it is at most this large (JSON), so a redrive resends it
without running the backend again; a larger answer is not kept and a redrive runs the backend once more."""
DEAD_LETTER_JSON_BUDGET = 3_600_000
"""Dead letters (without kept answers) as JSON, at most: once compressed and carried through continue-as-new (about
36 % of this when every id is a random UUID) they leave room for the dedupe windows and queued bodies inside
Temporal's 2 MiB payload limit. Senders and conversations repeat, so 10,000 letters take far less in practice; the
queue counts as full at whichever limit comes first."""
REPLY_PARTS_KEPT_TOTAL_BYTES = 256 * 1024
"""All dead letters together keep at most this many bytes (JSON) of answers, so however many replies fail, the
carried state stays inside Temporal's 2 MiB payload limit at continue-as-new; an answer not kept is produced again
by the backend on redrive."""
AUTO_EXCHANGE_WINDOW = timedelta(seconds=10)
"""A peer message arriving this soon after our reply in the same conversation counts as an automatic exchange."""
AUTO_EXCHANGE_FORGET = timedelta(hours=1)
"""A conversation's automatic-exchange count is forgotten after this long without messages."""

SettleReason = Literal["replied", "skipped", "dead_lettered", "duplicate", "discarded"]


def _parts_bytes(parts: list[ReplyPart] | None) -> int:
    """Size of a kept answer as carried (JSON bytes); 0 when none is kept."""
    return 0 if parts is None else sum(len(p.model_dump_json()) for p in parts)


def lane_of(row: PolledRow) -> str:
    """The conversation a row belongs to (docs/protocol.md §7): ``contextId``, else the sender, else ``canvas``."""
    return row.lane


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
    """Rows settled without dispatch (docs/protocol.md §4 skip rules, ping-pong guard)."""
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
    """A message set aside after failing (docs/protocol.md §8), kept as a reference: its body stays on the platform.

    Enough to tell the operator and to redrive it: a redrive re-reads the body from the platform (as large
    messages are, ``BodyRef``), so thousands of dead letters fit in the workflow's state.
    """

    row_id: str
    read_after: str | None = None
    """The inbox row before it, to re-read its body with ``since_id`` (``None``: looked for among the newest)."""
    created_at: datetime | None = None
    lane: str
    source_id: str | None = None
    """Sender workspace; ``None`` for the canvas."""
    message_id: str | None = None
    context_id: str | None = None
    """Only when the lane does not name it (``ctx:<contextId>`` lanes do): every byte counts, 10,000 are carried."""
    error: str
    """The last error, one line."""
    stage: Literal["parse", "dispatch", "reply"]
    """Where it failed: a malformed body, the backend, or sending the reply."""
    attempts: int
    first_failed_at: datetime | None = None
    """When it first failed, if earlier than ``dead_lettered_at``."""
    dead_lettered_at: datetime
    reply_parts: list[ReplyPart] | None = None
    """For ``stage == "reply"``: the backend's answer when at most ``REPLY_PARTS_KEPT_BYTES``, so a redrive re-sends
    it without re-running the backend."""

    @model_validator(mode="before")
    @classmethod
    def _from_full_row(cls, data: Any) -> Any:
        """Read dead letters carried by connectors started before letters were references (they held the row)."""
        if isinstance(data, dict) and "row" in data:
            data = dict(data)
            row = PolledRow.model_validate(data.pop("row"))
            data.update(cls.of_row(row))
        return data

    @staticmethod
    def of_row(row: PolledRow) -> dict[str, Any]:
        """The reference fields of an inbound row."""
        return {
            "row_id": row.row_id,
            "read_after": row.body_ref.read_after if row.body_ref is not None else None,
            "created_at": row.created_at,
            "source_id": row.source_id,
            "message_id": row.message.message_id if row.message is not None else None,
        }

    def to_row(self) -> PolledRow:
        """The row to deliver again on redrive: a reference whose body ``dispatch`` re-reads from the platform."""
        context_id = self.context_id or (self.lane.removeprefix("ctx:") if self.lane.startswith("ctx:") else None)
        message = A2AMessage(message_id=self.message_id or self.row_id, context_id=context_id)
        return PolledRow(
            row_id=self.row_id,
            created_at=self.created_at,
            source_id=self.source_id,
            method="message/send",
            outcome="deliver",
            message=message,
            body_ref=BodyRef(read_after=self.read_after, body_bytes=0),
        )


class AutoExchange(StateModel):
    """How many automatic exchanges a conversation has had in a row (docs/protocol.md §7, the ping-pong guard)."""

    count: int = 0
    last_message_at: datetime
    last_reply_at: datetime | None = None
    notified: bool = False
    """The sender was told once that automatic replies stopped."""


class PendingMessage(StateModel):
    """A fetched message waiting in its lane (or in flight)."""

    row: PolledRow
    lane: str
    reply_parts: list[ReplyPart] | None = None
    """Set when the message is redriven after a reply failure: skip the backend, only send this."""


class ConnectState(StateModel):
    """Everything a connector must not forget. See the module docstring for the cursor rules."""

    cursor: Cursor = Field(default_factory=Cursor)
    """Fetch and commit cursors (``workflows.cursor``): their only writer."""
    pending: list[PendingMessage] = Field(default_factory=list)
    """Messages to deliver, in arrival order (lanes are derived from it)."""
    recent_row_ids: list[str] = Field(default_factory=list)
    """Dedupe window of row ids (fetched, settled or not), oldest first."""
    recent_message_ids: list[str] = Field(default_factory=list)
    """Dedupe window of ``<sender>/<messageId>`` keys, oldest first."""
    dead_letters: list[DeadLetter] = Field(default_factory=list)
    dead_letters_evicted: int = 0
    """Dead letters dropped by connectors started before letters were references (never since)."""
    counters: Counters = Field(default_factory=Counters)
    last_delivery_at: datetime | None = None
    last_error: str | None = None
    paused: bool = False
    """Paused by an operator (``pause``): no polling, no new dispatches; survives continue-as-new."""
    started_at: datetime | None = None
    """When this connector first started (kept through continue-as-new; the heartbeat's ``uptime_seconds``)."""
    last_beat_at: datetime | None = None
    """When the platform last accepted one of this connector's heartbeats."""
    auto_exchanges: dict[str, AutoExchange] = Field(default_factory=dict)
    """Per conversation: automatic exchanges in a row (the ping-pong guard)."""
    health: BackendHealth = Field(default_factory=BackendHealth)
    """Recent dispatch outcomes and a backend outage in progress (``workflows.outage``)."""

    _row_ids: set[str] = PrivateAttr(default_factory=set)
    _message_ids: set[str] = PrivateAttr(default_factory=set)
    _dead_ids: set[str] = PrivateAttr(default_factory=set)
    _kept_reply_bytes: int = PrivateAttr(default=0)
    _letter_bytes: dict[str, int] = PrivateAttr(default_factory=dict)
    """Row id → JSON size of its dead letter without the kept answer (``DEAD_LETTER_JSON_BUDGET``)."""

    @model_validator(mode="before")
    @classmethod
    def _cursor_fields(cls, data: Any) -> Any:
        """Read state carried by connectors started before the cursor was one object (its fields at the top)."""
        if isinstance(data, dict) and "cursor" not in data:
            renamed = {"fetch_cursor": "fetch", "commit_cursor": "commit"}
            kept = ("seeded", "reseed", "not_before", "uncommitted", "unusable_row_ids")
            data = dict(data)
            cursor = {new: data.pop(old) for old, new in renamed.items() if old in data}
            cursor |= {name: data.pop(name) for name in kept if name in data}
            data["cursor"] = cursor
        return data

    @property
    def commit_cursor(self) -> RowPointer | None:
        """The commit cursor (``Cursor.commit``)."""
        return self.cursor.commit

    @property
    def fetch_cursor(self) -> RowPointer | None:
        """The fetch cursor (``Cursor.fetch``)."""
        return self.cursor.fetch

    def model_post_init(self, __context: object) -> None:
        """Rebuild the lookup sets from the carried windows and dead letters."""
        self._row_ids = set(self.recent_row_ids)
        self._message_ids = set(self.recent_message_ids)
        self._dead_ids = {d.row_id for d in self.dead_letters}
        self._kept_reply_bytes = sum(_parts_bytes(d.reply_parts) for d in self.dead_letters)
        self._letter_bytes = {d.row_id: _letter_bytes(d) for d in self.dead_letters}

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
        if result.seed is not None:
            self._remember(self.recent_row_ids, self._row_ids, result.seed.row_id)
        if self.cursor.read(result.model_copy(update={"rows": []})):
            self.counters.cursor_resets += 1
        to_dead_letter: list[tuple[PolledRow, str]] = []
        for row in result.rows:
            self.cursor.passed(row)
            if row.row_id in self._row_ids:
                self.counters.duplicates += 1
                continue
            self._remember(self.recent_row_ids, self._row_ids, row.row_id)
            self.counters.received += 1
            self.cursor.fetched(row)
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
        self.cursor.settle(row_id)

    def record_reply(self, row_id: str, at: datetime) -> None:
        """A reply was accepted by the platform: settle and count it."""
        self.counters.replied += 1
        self.last_delivery_at = at
        self.settle(row_id)

    def record_skip(self, row_id: str) -> None:
        """Settle a row without dispatch (e.g. the ping-pong guard)."""
        self.counters.skipped += 1
        self.settle(row_id)

    # --- dead letters -----------------------------------------------------------------------------------------

    @property
    def dead_letters_full(self) -> bool:
        """Whether the dead-letter queue is full: no new work until an operator makes room.

        Full at ``DEAD_LETTER_LIMIT`` letters or ``DEAD_LETTER_JSON_BUDGET`` bytes, whichever comes first.
        """
        return (
            len(self.dead_letters) >= DEAD_LETTER_LIMIT or sum(self._letter_bytes.values()) >= DEAD_LETTER_JSON_BUDGET
        )

    def dead_letter(self, letter: DeadLetter) -> None:
        """Set a message aside and settle its row. Nothing is evicted (see ``dead_letters_full``).

        Its answer (``reply_parts``) is kept only within ``REPLY_PARTS_KEPT_BYTES`` for the letter and
        ``REPLY_PARTS_KEPT_TOTAL_BYTES`` for all letters together.
        """
        if letter.row_id in self._dead_ids:
            replaced = [d for d in self.dead_letters if d.row_id == letter.row_id]
            self._kept_reply_bytes -= sum(_parts_bytes(d.reply_parts) for d in replaced)
            self.dead_letters = [d for d in self.dead_letters if d.row_id != letter.row_id]
        size = _parts_bytes(letter.reply_parts)
        if size > REPLY_PARTS_KEPT_BYTES or self._kept_reply_bytes + size > REPLY_PARTS_KEPT_TOTAL_BYTES:
            letter = letter.model_copy(update={"reply_parts": None})
            size = 0
        self._kept_reply_bytes += size
        self.dead_letters.append(letter)
        self._dead_ids.add(letter.row_id)
        self._letter_bytes[letter.row_id] = _letter_bytes(letter)
        self.counters.dead_lettered += 1
        self.last_error = letter.error
        self.settle(letter.row_id)

    def take_dead_letters(self, row_id: str | None) -> list[DeadLetter]:
        """Remove and return the dead letter with ``row_id``, or all of them when ``row_id`` is ``None``."""
        taken = [d for d in self.dead_letters if row_id is None or d.row_id == row_id]
        gone = {d.row_id for d in taken}
        self.dead_letters = [d for d in self.dead_letters if d.row_id not in gone]
        self._dead_ids -= gone
        self._kept_reply_bytes -= sum(_parts_bytes(d.reply_parts) for d in taken)
        for row_id in gone:
            self._letter_bytes.pop(row_id, None)
        return taken

    def redrive(self, letters: list[DeadLetter]) -> None:
        """Put dead letters back at the end of their lanes (the commit cursor does not move back).

        Their bodies are re-read from the platform by ``dispatch``; a reply-stage letter that kept its answer only
        resends it.
        """
        for letter in letters:
            self.pending.append(
                PendingMessage(
                    row=letter.to_row(),
                    lane=letter.lane,
                    reply_parts=letter.reply_parts if letter.stage == "reply" else None,
                )
            )
            self.counters.redriven += 1
        if letters:
            self.last_error = None

    # --- the ping-pong guard ----------------------------------------------------------------------------------

    def count_auto_exchange(self, message: PendingMessage, now: datetime) -> AutoExchange:
        """Count an inbound message towards its conversation's automatic exchanges; return the conversation's count.

        Automatic (docs/protocol.md §7): from a workspace (``source_id``) with ``role: agent``, or arriving within
        ``AUTO_EXCHANGE_WINDOW`` of our reply in the same conversation. Anything else (a person, a first message)
        starts the count again. Counted here, on our side, so the guard works whatever metadata the peer copies.
        """
        row = message.row
        arrived = row.created_at or now
        exchange = self.auto_exchanges.get(message.lane)
        if exchange is None or arrived - exchange.last_message_at > AUTO_EXCHANGE_FORGET:
            exchange = AutoExchange(last_message_at=arrived)
        role = row.message.role if row.message is not None else "user"
        quick = (
            exchange.last_reply_at is not None
            and timedelta(0) <= arrived - exchange.last_reply_at <= AUTO_EXCHANGE_WINDOW
        )
        automatic = row.source_id is not None and (role == "agent" or quick)
        if automatic:
            exchange = exchange.model_copy(update={"count": exchange.count + 1, "last_message_at": arrived})
        else:
            exchange = AutoExchange(last_message_at=arrived, last_reply_at=exchange.last_reply_at)
        self.auto_exchanges[message.lane] = exchange
        for lane in [k for k, v in self.auto_exchanges.items() if now - v.last_message_at > AUTO_EXCHANGE_FORGET]:
            del self.auto_exchanges[lane]
        return exchange

    def note_reply(self, lane: str, at: datetime) -> None:
        """Remember when we last replied in a conversation (for :meth:`count_auto_exchange`)."""
        exchange = self.auto_exchanges.get(lane)
        if exchange is not None:
            self.auto_exchanges[lane] = exchange.model_copy(update={"last_reply_at": at})
        else:
            self.auto_exchanges[lane] = AutoExchange(last_message_at=at, last_reply_at=at)

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


def _letter_bytes(letter: DeadLetter) -> int:
    return len(letter.model_dump_json(exclude={"reply_parts"}))
