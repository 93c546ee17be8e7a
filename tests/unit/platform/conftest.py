"""Fixtures of the ``PlatformActivities`` tests: the activities over a scripted platform, an ``ActivityEnvironment``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.platform import PlatformActivities
from tests.unit.platform.fake_platform import FakePlatform, token_for


@pytest.fixture
async def platform() -> AsyncIterator[FakePlatform]:
    fake = FakePlatform()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as http:
        fake.acts = PlatformActivities(http, token_for, agent_version="1.2.3")
        yield fake


@pytest.fixture
def env() -> ActivityEnvironment:
    return ActivityEnvironment()
