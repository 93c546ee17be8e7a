"""``Controls``: what the control plane does to a running connector, for its updates and their signal twins alike.

``ConnectWorkflow``'s handlers are thin: each update validates (in its validator, before anything reaches history)
and calls one method here; each signal twin runs the same validation and the same method through :meth:`signal`,
which logs a rejection and lists it in ``status`` instead (a signal has no caller to tell).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities.messages import CheckCursorInput, RowPointer
    from workflows import calls
    from workflows.context import Connector
    from workflows.lanes import LaneSupervisor
    from workflows.messages import (
        ConfigureInput,
        ConnectSettings,
        DeadLetterActionResult,
        DeadLetterSelection,
        SetCursorInput,
    )


class Controls:
    """The effects of ``pause``, ``resume``, ``drain``, ``set_cursor``, ``redrive``, ``discard`` and ``configure``."""

    def __init__(self, connector: Connector, lanes: LaneSupervisor) -> None:
        self._c = connector
        self._lanes = lanes

    def pause(self) -> None:
        """Stop reading the inbox and starting dispatches (lanes stop at their next step; kept through CAN)."""
        if not self._c.state.paused:
            self._c.state.paused = True
            workflow.logger.info("paused", extra=self._c.log())
            self._c.control_changed()

    def resume(self) -> None:
        """Read and dispatch again after :meth:`pause`."""
        if self._c.state.paused:
            self._c.state.paused = False
            workflow.logger.info("resumed", extra=self._c.log())
            self._c.control_changed()
            self._lanes.start()

    def drain(self) -> None:
        """Stop reading; deliver everything fetched, then the run completes."""
        c = self._c
        if not c.draining:
            c.draining = True
            workflow.logger.info("draining", extra=c.log(pending=len(c.state.pending)))
            c.control_changed()
            self._lanes.start()

    async def set_cursor(self, input: SetCursorInput) -> None:
        """Check the row with the platform (``check_cursor``), then move the cursor.

        Raises:
            ApplicationError: The platform does not know the row (or could not be asked).
        """
        c = self._c
        if input.row_id != "latest" and c.v2:
            try:
                await calls.check_cursor(CheckCursorInput(target=c.target, row_id=input.row_id))
            except ActivityError as err:
                raise ApplicationError(calls.failure(err)[1], non_retryable=True) from None
        c.state.cursor.set_by_operator(None if input.row_id == "latest" else RowPointer(row_id=input.row_id))
        workflow.logger.info("cursor set to %s", input.row_id, extra=c.log())
        c.control_changed()

    def redrive(self, input: DeadLetterSelection) -> DeadLetterActionResult:
        """Put the selected dead letters back at the end of their lanes."""
        letters = self._c.state.take_dead_letters(input.row_id)
        self._c.state.redrive(letters)
        workflow.logger.info("redrive %d dead letter(s)", len(letters), extra=self._c.log())
        self._lanes.start()
        return DeadLetterActionResult(count=len(letters), row_ids=[d.row_id for d in letters])

    def discard(self, input: DeadLetterSelection) -> DeadLetterActionResult:
        """Forget the selected dead letters (their rows stay settled)."""
        letters = self._c.state.take_dead_letters(input.row_id)
        workflow.logger.info("discarded %d dead letter(s)", len(letters), extra=self._c.log())
        return DeadLetterActionResult(count=len(letters), row_ids=[d.row_id for d in letters])

    def configure(self, input: ConfigureInput) -> None:
        """Apply settings changes; the running session is replaced so they take effect at once."""
        self._c.settings = self.merged_settings(input)
        workflow.logger.info("configured %s", sorted(input.changes), extra=self._c.log())
        self._c.control_changed()
        self._lanes.start()

    def validate_selection(self, input: DeadLetterSelection) -> None:
        """Raise ``ValueError`` for a row id that is not a dead letter."""
        if input.row_id is not None and all(d.row_id != input.row_id for d in self._c.state.dead_letters):
            raise ValueError(f"no dead letter with row id {input.row_id}")

    def merged_settings(self, input: ConfigureInput) -> ConnectSettings:
        """The settings after ``input``; ``ValueError`` names the first unknown setting or bad value."""
        if not input.changes:
            raise ValueError("nothing to configure: give at least one KEY=VALUE")
        unknown = sorted(set(input.changes) - set(ConnectSettings.model_fields))
        if unknown:
            known = ", ".join(ConnectSettings.model_fields)
            raise ValueError(f"unknown setting {unknown[0]!r} (known: {known})")
        try:
            return ConnectSettings.model_validate({**self._c.settings.model_dump(), **input.changes})
        except ValidationError as err:
            first = err.errors()[0]
            raise ValueError(f"invalid {'.'.join(map(str, first['loc']))}: {first['msg']}") from None

    async def signal(self, name: str, validate: Callable[[], object], apply: Callable[[], object]) -> None:
        """Run a control signal: validate, then apply; a rejection is logged and listed in ``status``."""
        try:
            validate()
            outcome = apply()
            if isinstance(outcome, Awaitable):
                await outcome
        except (ValueError, ApplicationError) as err:
            reason = f"signal {name} rejected: {err.message if isinstance(err, ApplicationError) else err}"
            workflow.logger.warning(reason, extra=self._c.log())
            c = self._c
            c.rejected_signals = [*c.rejected_signals[-9:], f"{workflow.now().isoformat()} {reason}"]
