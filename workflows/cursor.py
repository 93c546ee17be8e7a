"""``Cursor``: where the connector is in its inbox, and the only code that moves it (pure, no temporalio import).

Two positions (docs/protocol.md §8, docs/architecture.md §2):

- the **fetch cursor** is the last row read; the session's inbox reads run ahead from it;
- the **commit cursor** is the last row of the longest fully *settled* prefix of fetched rows (settled = replied,
  skipped or dead-lettered); it never passes an unsettled row.

The session reports what a read saw (``PollResult``); the cursor decides what it means. Its transitions (only the
methods below write its fields), event → effect:

| event | method | fetch | commit | also |
|---|---|---|---|---|
| cold start ``latest`` (``seed``: newest row) | :meth:`read` | newest row | newest row if none unsettled | seeded |
| cold start ``backlog`` or empty inbox | :meth:`read` | over the rows read | - | seeded |
| rows read after the cursor | :meth:`read` | last UUID row | - | skip non-UUID rows next |
| ``410``: cursor unknown or pruned | :meth:`read` | cleared, then the rows | - | ``not_before`` = lost time |
| a row settles | :meth:`settle` | - | over the settled prefix | - |
| operator ``set_cursor ROW`` | :meth:`set_by_operator` | ``ROW`` | ``ROW`` if none unsettled | ``not_before`` |
| operator ``set_cursor latest`` | :meth:`set_by_operator` | cleared | - | ``reseed`` |

Rows older than ``not_before`` are never delivered again after a reset, so a 410 (on the old cursor, or on one an
operator set) cannot redeliver settled messages; the dedupe window (``workflows.state``) drops the rest.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from activities.messages import ColdStart, PolledRow, PollInput, PollResult, RowPointer

UNUSABLE_REMEMBERED = 1000
"""Settled rows that cannot be cursors (not UUIDs) remembered at the head of the inbox; older ones are forgotten."""


class FetchedRow(BaseModel):
    """A fetched row not yet behind the commit cursor."""

    model_config = ConfigDict(extra="forbid")

    pointer: RowPointer
    settled: bool = False


class Cursor(BaseModel):
    """The fetch and commit cursors with the rows between them. See the module docstring for the transitions."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    fetch: RowPointer | None = None
    commit: RowPointer | None = None
    seeded: bool = False
    """The cold start happened (``start_from`` no longer applies)."""
    reseed: bool = False
    """``set_cursor latest`` was asked: the next read seeds at the newest row whatever ``start_from`` says."""
    not_before: datetime | None = None
    """After a reset: rows created before this are not new."""
    uncommitted: list[FetchedRow] = Field(default_factory=list)
    """Fetched rows from the first unsettled one on, in arrival order."""
    unusable_row_ids: list[str] = Field(default_factory=list)
    """Settled rows that cannot be the cursor (not UUIDs) while no later row can be: the reads leave them out."""

    def read_input(self, start_from: ColdStart, **fields: object) -> PollInput:
        """The inbox read to ask the session for next (``PollInput``), with the given tuning ``fields``."""
        return PollInput(
            cursor=self.fetch,
            seeded=self.seeded,
            start_from="latest" if self.reseed else start_from,
            not_before=self.not_before,
            **fields,  # type: ignore[arg-type]
        )

    def read(self, result: PollResult) -> bool:
        """Take what a read saw: a cold start, a seed, a lost cursor (``410``) and its rows, oldest first.

        Returns:
            Whether the cursor was lost and recovered (a ``410``), for the counter and the log.
        """
        if result.cold_start_done:
            self.seeded = True
            self.reseed = False
        if result.seed is not None:
            self.fetch = result.seed
            if not self.uncommitted:
                self.commit = result.seed
        if result.cursor_reset:
            if self.fetch is not None:
                self.not_before = self.fetch.created_at or self.not_before
            self.fetch = None
        for row in result.rows:
            self.passed(row)
        return result.cursor_reset

    def passed(self, row: PolledRow) -> None:
        """Move the fetch cursor over one row read (a row that cannot be a cursor is remembered instead)."""
        if row.pointer.usable:
            self.fetch = row.pointer
            self.unusable_row_ids.clear()
        elif row.row_id not in self.unusable_row_ids:
            self.unusable_row_ids.append(row.row_id)
            del self.unusable_row_ids[:-UNUSABLE_REMEMBERED]

    def fetched(self, row: PolledRow) -> None:
        """A new row (not a duplicate) joins the unsettled rows the commit cursor waits for."""
        self.uncommitted.append(FetchedRow(pointer=row.pointer))

    def settle(self, row_id: str) -> None:
        """Mark a row settled and advance the commit cursor over the settled prefix."""
        for fetched in self.uncommitted:
            if fetched.pointer.row_id == row_id:
                fetched.settled = True
                break
        while self.uncommitted and self.uncommitted[0].settled:
            pointer = self.uncommitted.pop(0).pointer
            if pointer.usable:
                self.commit = pointer
        if not self.uncommitted and self.fetch is not None:
            self.commit = self.fetch

    def set_by_operator(self, pointer: RowPointer | None) -> None:
        """Continue reading after ``pointer``, or at the newest row when ``None`` (the ``set_cursor`` update).

        Fetched messages stay queued; the commit cursor only follows once they settle. A rewind redelivers nothing
        already seen (the dedupe window drops it), and a 410 on the new cursor nothing older than what was settled.
        """
        self.fetch = pointer
        self.not_before = self.commit.created_at if self.commit is not None else self.not_before
        self.reseed = pointer is None
        if pointer is None:
            self.seeded = False
        if not self.uncommitted and pointer is not None:
            self.commit = pointer
