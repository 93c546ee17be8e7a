"""A deliberately changed ConnectWorkflow, to prove the replay check fails on an unpatched change.

Its own module: the workflow sandbox re-imports the module a workflow is defined in.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from workflows.connect import ConnectWorkflow
from workflows.messages import ConnectInput, ConnectResult


@workflow.defn(name="ConnectWorkflow")
class ChangedConnectWorkflow(ConnectWorkflow):
    """A careless change: a timer before anything else, without ``workflow.patched``."""

    @workflow.run
    async def run(self, input: ConnectInput) -> ConnectResult:
        await workflow.sleep(timedelta(seconds=1))
        return await super().run(input)
