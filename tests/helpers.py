"""Test helpers: wait on conditions (never on the clock), a token table, and a harness that wires a real
devplatform, a real Temporal server and a connector worker together."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.messages import BackendSpec
from devplatform.client import AsyncPlatformAdmin, CreatedWorkspace
from devplatform.server import RunningPlatform
from worker.assemble import running_worker
from worker.control import connector_status, start_connector
from workflows.messages import ConnectInput, ConnectSettings, StatusResult

FAST = {"poll_interval_s": 0.2, "blocked_retry_s": 1.0, "dispatch_heartbeat_timeout_s": 5.0}
"""Settings that keep tests quick: fast polls, fast recovery from blocked duties and dead workers."""


def new_task_queue() -> str:
    return f"tq-{uuid.uuid4()}"


async def wait_until(
    predicate: Callable[[], Awaitable[Any]] | Callable[[], Any],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str = "condition",
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if asyncio.iscoroutine(last) or isinstance(last, Awaitable):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last!r})")
        await asyncio.sleep(interval)


class Tokens(dict[str, str]):
    """Workspace id → token, as a worker's token lookup; a missing id raises ``LookupError`` with advice."""

    def token_for(self, workspace_id: str) -> str:
        try:
            return self[workspace_id]
        except KeyError:
            raise LookupError(f"no token for workspace {workspace_id}") from None


@dataclass
class Harness:
    """One test's world: platform, Temporal client, task queue and the tokens its workers use."""

    client: Client
    task_queue: str
    platform: RunningPlatform
    admin: AsyncPlatformAdmin
    tokens: Tokens = field(default_factory=Tokens)

    async def workspace(self, name: str = "ws") -> CreatedWorkspace:
        created = await self.admin.create_workspace(name)
        assert created.token is not None
        self.tokens[created.id] = created.token
        return created

    @contextlib.asynccontextmanager
    async def worker(self, **kwargs: Any) -> AsyncIterator[Worker]:
        async with running_worker(
            self.client, task_queue=self.task_queue, token_for=self.tokens.token_for, **kwargs
        ) as worker:
            yield worker

    def input(self, workspace: CreatedWorkspace, backend: BackendSpec | None = None, **settings: Any) -> ConnectInput:
        return ConnectInput(
            workspace_id=workspace.id,
            platform_url=self.platform.url,
            backend=backend or BackendSpec(),
            settings=ConnectSettings(**{**FAST, **settings}),
        )

    async def start(
        self,
        workspace: CreatedWorkspace,
        backend: BackendSpec | None = None,
        *,
        wait_seeded: bool = True,
        **settings: Any,
    ) -> WorkflowHandle[Any, Any]:
        handle = await start_connector(
            self.client, self.input(workspace, backend, **settings), task_queue=self.task_queue
        )
        if wait_seeded:
            await wait_until(lambda: self._seeded(workspace.id), timeout=30, message="cold start")
        return handle

    async def _seeded(self, workspace_id: str) -> bool:
        status = await self.status(workspace_id)
        return status.seeded and status.phase == "connected"

    async def status(self, workspace_id: str) -> StatusResult:
        return await connector_status(self.client, workspace_id)

    async def replies_to(self, peer_id: str, from_id: str) -> list[dict[str, Any]]:
        """Messages in ``peer_id``'s inbox sent by ``from_id`` (our connector's replies)."""
        rows = await self.admin.rows(peer_id)
        return [r for r in rows if r.get("source_id") == from_id and r.get("method") == "message/send"]

    async def notifications(self, workspace_id: str) -> list[dict[str, Any]]:
        rows = await self.admin.rows(workspace_id)
        return [r for r in rows if r.get("method") == "notify"]


def reply_message(row: dict[str, Any]) -> dict[str, Any]:
    """The A2A message of a reply row."""
    return row["request_body"]["params"]["message"]


def reply_text(row: dict[str, Any]) -> str:
    return "\n".join(p.get("text", "") for p in reply_message(row)["parts"] if p.get("kind") == "text")
