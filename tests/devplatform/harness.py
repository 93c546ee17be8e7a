"""Harness for devplatform tests: an app on a temp SQLite file, driven in-process by ``ASGITransport``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from fastapi import FastAPI

from devplatform.app import create_app
from devplatform.client import AsyncPlatformAdmin, CreatedWorkspace, text_message
from devplatform.settings import PlatformSettings

BASE_URL = "http://devplatform.test"
ROW_TIMESTAMP = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"


class FakeClock:
    """A UTC clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = datetime(2026, 4, 30, 5, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Harness:
    """One running app: raw HTTP (no default headers) plus the admin client on the same transport."""

    app: FastAPI
    settings: PlatformSettings
    http: httpx.AsyncClient
    admin: AsyncPlatformAdmin

    async def workspace(self, name: str = "ws") -> CreatedWorkspace:
        return await self.admin.create_workspace(name)

    async def send(
        self, target_id: str, body: Any, *, sender: CreatedWorkspace | None = None, raw: bytes | None = None
    ) -> httpx.Response:
        """POST /workspaces/{target}/a2a as ``sender`` (canvas when None); ``raw`` bypasses JSON encoding."""
        headers = {"Content-Type": "application/json"}
        if sender is None:
            headers["Authorization"] = f"Bearer {self.settings.admin_token}"
        else:
            headers["Authorization"] = f"Bearer {sender.token}"
        content = raw if raw is not None else orjson.dumps(body)
        return await self.http.post(f"/workspaces/{target_id}/a2a", content=content, headers=headers)

    async def send_text(self, target_id: str, text: str, *, sender: CreatedWorkspace | None = None, **kw: Any) -> str:
        """Send a text message; returns its messageId."""
        body = text_message(text, **kw)
        response = await self.send(target_id, body, sender=sender)
        assert response.status_code == 200, response.text
        return str(body["params"]["message"]["messageId"])

    async def poll(self, ws: CreatedWorkspace, **params: Any) -> httpx.Response:
        return await self.http.get(f"/workspaces/{ws.id}/activity", params=params, headers=bearer(ws.token))


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def running(settings: PlatformSettings, clock: FakeClock | None = None) -> AsyncIterator[Harness]:
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http,
            AsyncPlatformAdmin(BASE_URL, settings.admin_token, transport=transport) as admin,
        ):
            yield Harness(app=app, settings=settings, http=http, admin=admin)


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait on a condition, never on the clock."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
