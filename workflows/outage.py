"""``BackendHealth``: telling a poison message from a backend that is down (pure, no temporalio import).

The workflow retries dispatches itself (one activity attempt each), so it sees every failure as it happens, across
all conversations. The rule:

- A message that fails while other messages succeed is the problem: it is retried up to ``max_attempts``, then
  dead-lettered and its sender told.
- When dispatches of **two or more different messages** fail with no success in between, the backend is down (an
  agent restarting, a model API outage), not the messages: the connector goes ``backend_down``. Failed messages are
  held (not settled, not dead-lettered, no error reply), no new dispatch starts, and one **probe** (the next waiting
  message, preferring one that has not failed) is tried once on the ladder 1 s → 5 s → 15 s → 60 s → 5 min (then
  every 5 min). The first success ends the outage; held messages then start their attempts again.

Two poison messages in a row with nothing else to deliver look like an outage: they are probed until another
message succeeds (then, failing while others succeed, they are dead-lettered) or an operator acts.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PROBE_LADDER_S = (1.0, 5.0, 15.0, 60.0, 300.0)
"""Seconds before each probe of a down backend; the last one repeats."""
OUTCOME_WINDOW = 20
"""Dispatch outcomes the error rate is computed over."""

Verdict = Literal["retry", "dead_letter", "hold"]


class Outage(BaseModel):
    """A backend outage in progress."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    since: datetime
    rung: int = 0
    """Index into :data:`PROBE_LADDER_S` of the next probe's delay."""
    next_probe_at: datetime
    held: list[str] = Field(default_factory=list)
    """Row ids of the messages whose failures led here (tried again once the backend is back)."""
    probes: int = 0
    """Probes that failed so far."""
    last_error: str


class BackendHealth(BaseModel):
    """Recent dispatch outcomes and the outage, if any. Carried through continue-as-new."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    last_success_at: datetime | None = None
    outage: Outage | None = None
    recent_failures: list[bool] = Field(default_factory=list)
    """The last :data:`OUTCOME_WINDOW` dispatch outcomes, oldest first: ``True`` for a failure."""
    failing: list[str] = Field(default_factory=list)
    """Row ids of the messages whose dispatch failed since the last success."""

    @property
    def down(self) -> bool:
        """Whether the backend is considered down (phase ``backend_down``)."""
        return self.outage is not None

    @property
    def error_rate(self) -> float:
        """Share of failed dispatches among the recent ones; 1.0 while down (the platform shows ``degraded``)."""
        if self.outage is not None:
            return 1.0
        if not self.recent_failures:
            return 0.0
        return sum(self.recent_failures) / len(self.recent_failures)

    def _note(self, failed: bool) -> None:
        self.recent_failures.append(failed)
        del self.recent_failures[:-OUTCOME_WINDOW]

    def succeeded(self, now: datetime) -> bool:
        """Record a successful dispatch; returns ``True`` when it ended an outage."""
        self.last_success_at = now
        self._note(False)
        self.failing.clear()
        ended = self.outage is not None
        self.outage = None
        return ended

    def failed(self, row_id: str, error: str, now: datetime, *, attempt: int, max_attempts: int) -> Verdict:
        """Record one failed dispatch attempt of a message.

        Args:
            row_id: The message's row.
            error: The failure, one line.
            now: Workflow time.
            attempt: This attempt's number (1 for the first; counted again from 1 after an outage).
            max_attempts: ``ConnectSettings.max_attempts``.

        Returns:
            ``hold`` while the backend is down (this failure may have started the outage), ``dead_letter`` when the
            message used up its attempts while the backend is not down, else ``retry`` (after a backoff).
        """
        self._note(True)
        if row_id not in self.failing:
            self.failing.append(row_id)
        if self.outage is None and len(self.failing) < 2:
            return "dead_letter" if attempt >= max_attempts else "retry"
        outage = self.outage
        if outage is None:
            outage = self.outage = Outage(since=now, next_probe_at=now, last_error=error)
        else:
            outage.probes += 1
            outage.rung = min(outage.rung + 1, len(PROBE_LADDER_S) - 1)
        for held in self.failing:
            if held not in outage.held:
                outage.held.append(held)
        outage.last_error = error
        outage.next_probe_at = now + timedelta(seconds=PROBE_LADDER_S[outage.rung])
        return "hold"

    def probe_due_in(self, now: datetime) -> timedelta:
        """Time until the next probe may start (zero when due or when not down)."""
        if self.outage is None:
            return timedelta(0)
        return max(self.outage.next_probe_at - now, timedelta(0))

    def choose_probe(self, waiting: list[str]) -> str | None:
        """The message to probe with, among the row ids of ``waiting`` lanes (oldest first).

        A message that has not failed is preferred: its success proves the backend is back, while a held message
        might be a poison one. ``None`` when nothing waits.
        """
        if self.outage is None or not waiting:
            return None
        fresh = [row_id for row_id in waiting if row_id not in self.outage.held]
        return (fresh or waiting)[0]
