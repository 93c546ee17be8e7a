"""Fixtures for devplatform tests (helpers live in ``harness.py``)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from devplatform.settings import PlatformSettings
from tests.devplatform.harness import FakeClock, Harness, running

MakePlatform = Callable[..., AbstractAsyncContextManager[Harness]]


@pytest.fixture
def make_platform(tmp_path: Path) -> MakePlatform:
    """Factory: ``async with make_platform(clock=..., **settings_overrides) as h``."""
    numbers = itertools.count()

    def factory(clock: FakeClock | None = None, **overrides: Any) -> AbstractAsyncContextManager[Harness]:
        settings = PlatformSettings(db_path=tmp_path / f"platform-{next(numbers)}.db", **overrides)
        return running(settings, clock)

    return factory


@pytest.fixture
async def platform(make_platform: MakePlatform) -> AsyncIterator[Harness]:
    async with make_platform() as harness:
        yield harness


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def clocked(make_platform: MakePlatform, clock: FakeClock) -> AsyncIterator[Harness]:
    """A platform whose time is ``clock``."""
    async with make_platform(clock=clock) as harness:
        yield harness
