"""``LaneSupervisor``: the one owner of the conversation lanes (docs/protocol.md §7).

A lane is a conversation (``contextId``, else the sender); it delivers its messages one at a time, in arrival order,
and lanes run in parallel up to ``max_concurrency``. The supervisor starts a lane task for each conversation with
work (oldest message first), starts more as lanes end or settings change, stops them for continue-as-new or pause,
and keeps them until drained. While the backend is down the lanes only wait, so the probe's lane is started even
past the cap. A lane's unexpected exception is a bug: :meth:`LaneSupervisor.watch` re-raises it in ``run``, which
fails the workflow task (retried, visible in the Web UI) instead of losing the lane.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.tracing import message_trace
    from workflows.context import Connector
    from workflows.delivery import Delivery, LaneStopped
    from workflows.duties import Duties


class LaneSupervisor:
    """Starts, caps, stops and watches the lane tasks of one run."""

    def __init__(self, connector: Connector, duties: Duties) -> None:
        self._c = connector
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._crash: BaseException | None = None
        self.delivery = Delivery(connector, duties, on_outage_change=self.start)

    @property
    def running(self) -> bool:
        """Whether any lane task is running."""
        return bool(self._tasks)

    @property
    def crashed(self) -> bool:
        """Whether a lane failed with an unexpected exception (see :meth:`watch`)."""
        return self._crash is not None

    def watch(self) -> None:
        """Re-raise a lane's unexpected exception, failing the workflow task."""
        if self._crash is not None:
            raise self._crash

    def start(self) -> None:
        """Start a task for each lane with work, in order of its oldest message, up to ``max_concurrency``."""
        c = self._c
        if c.stopping or (c.state.paused and not c.draining):
            return
        lanes = c.state.lane_queues()
        for lane in lanes:
            if len(self._tasks) >= c.settings.max_concurrency:
                break
            self._start(lane)
        probe = self.delivery.probe(lanes)
        if probe is not None:
            self._start(next(lane for lane, queue in lanes.items() if queue[0].row.row_id == probe))

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait until ``done()`` holds or a lane crashed (then raise its exception)."""
        await workflow.wait_condition(lambda: done() or self.crashed)
        self.watch()

    def _start(self, lane: str) -> None:
        if lane not in self._tasks:
            self._tasks[lane] = asyncio.create_task(self._run(lane))

    async def _run(self, lane: str) -> None:
        c = self._c
        ended = False
        try:
            while not c.lanes_must_stop():
                message = c.state.next_in_lane(lane)
                if message is None:
                    break
                with message_trace(c.target.workspace_id, message.row.row_id):
                    await self.delivery.deliver(message)
            ended = True
        except LaneStopped:
            pass  # the message stays queued; the lane starts again when allowed
        except Exception as err:  # noqa: BLE001 - re-raised by ``watch`` in ``run``
            self._crash = err
        finally:
            self._tasks.pop(lane, None)
            # Not when cancelled (eviction from the worker's cache, workflow cancellation): a lane task started
            # then would outlive the instance ("no running event loop" once it is garbage-collected).
            if ended:
                self.start()
