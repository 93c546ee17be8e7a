"""A ConnectWorkflow that stops in its first workflow task for longer than the SDK's 2 s deadlock timeout, as it
would at a debugger breakpoint. Its own module: the workflow sandbox re-imports the module a workflow is defined in.
"""

from __future__ import annotations

import time

from temporalio import workflow

from workflows.connect import ConnectWorkflow
from workflows.messages import ConnectInput, ConnectResult

BREAKPOINT_S = 2.5
"""Longer than the deadlock detection's 2 s."""


@workflow.defn(name="ConnectWorkflow")
class PausedConnectWorkflow(ConnectWorkflow):
    """Blocks the workflow thread once, the way a breakpoint does, then runs as usual."""

    @workflow.run
    async def run(self, input: ConnectInput) -> ConnectResult:
        with workflow.unsafe.sandbox_unrestricted():
            time.sleep(BREAKPOINT_S)
        return await super().run(input)
