"""A scripted Molecule platform for the ``PlatformActivities`` tests (``httpx.MockTransport``), and inbox rows as
the platform stores them. Shared by the tests of this directory, ``test_large_messages.py`` and ``test_inbox.py``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from temporalio.exceptions import ApplicationError

from activities.messages import (
    PlatformTarget,
)
from activities.platform import PlatformActivities

URL = "https://platform.test"
WS = "11111111-1111-4111-8111-111111111111"
PEER = "22222222-2222-4222-8222-222222222222"
TOKEN = "tok-ws-secret"
TARGET = PlatformTarget(workspace_id=WS, platform_url=URL)
T0 = datetime(2026, 4, 30, 5, 0, tzinfo=UTC)

Responder = Callable[[httpx.Request], httpx.Response]


def token_for(workspace_id: str) -> str:
    if workspace_id != WS:
        raise LookupError(f"no token configured for workspace {workspace_id}")
    return TOKEN


class FakePlatform:
    """Records every request; answers from a one-shot script first, then from ``default``."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.reads: list[httpx.Request] = []
        self.script: list[httpx.Response | Responder] = []
        self.default: Responder = lambda request: httpx.Response(200, json=[])
        self.acts: PlatformActivities

    def then(self, *answers: httpx.Response | Responder) -> FakePlatform:
        self.script.extend(answers)
        return self

    workspace: dict[str, Any] = {"status": "awaiting_agent", "last_heartbeat_at": None}
    """What ``GET /workspaces/{id}`` answers (register reads it first); such reads are kept apart in ``reads``."""

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.rstrip("/").endswith(f"/workspaces/{WS}"):
            self.reads.append(request)
            return httpx.Response(200, json=self.workspace)
        self.requests.append(request)
        answer = self.script.pop(0) if self.script else self.default
        return answer(request) if callable(answer) else answer

    def body(self, index: int = -1) -> Any:
        return orjson.loads(self.requests[index].content)


def row_id(n: int) -> str:
    return str(uuid.UUID(int=n))


def at(n: int) -> datetime:
    return T0 + timedelta(seconds=n)


def inbox_row(n: int, *, text: str | None = None, source: str | None = PEER, **overrides: Any) -> dict[str, Any]:
    """An ``a2a_receive`` row as the platform stores it (docs/protocol.md §4)."""
    row: dict[str, Any] = {
        "id": row_id(n),
        "workspace_id": WS,
        "activity_type": "a2a_receive",
        "source_id": source,
        "target_id": WS,
        "method": "message/send",
        "summary": "message/send → WS (queued for poll)",
        "status": "ok",
        "created_at": at(n).isoformat().replace("+00:00", "Z"),
        "seq": n,
        "request_body": {
            "jsonrpc": "2.0",
            "id": f"req-{n}",
            "method": "message/send",
            "params": {
                "message": {
                    "role": "user",
                    "messageId": f"msg-{n}",
                    "contextId": f"ctx-{n}",
                    "parts": [{"kind": "text", "text": text if text is not None else f"hello {n}"}],
                }
            },
        },
    }
    row.update(overrides)
    return row


def rows_answer(*rows: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json=list(rows))


def params_of(request: httpx.Request) -> dict[str, str]:
    return dict(request.url.params)


async def raises(coro: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        await coro
    return info.value
