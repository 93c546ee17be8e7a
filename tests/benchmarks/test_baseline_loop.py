"""The baseline loop shares ``row_to_polled`` with the connector: a body it turns into a reference must still reach
the baseline's backend whole."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson

from activities.a2a import TextPart
from activities.backends.base import BackendRequest, BackendResponse
from activities.inbox import BODY_REF_BYTES
from benchmarks.baseline_loop import BaselineConnector, CursorFile
from devplatform.client import CreatedWorkspace, text_message

URL = "http://platform.test"
WS = "11111111-1111-4111-8111-111111111111"
PEER = "22222222-2222-4222-8222-222222222222"


class RecordingBackend:
    """Answers ``ok`` and keeps every request."""

    def __init__(self) -> None:
        self.requests: list[BackendRequest] = []

    async def handle(self, request: BackendRequest) -> BackendResponse:
        self.requests.append(request)
        return BackendResponse(parts=[TextPart(text="ok")])

    async def close(self) -> None:
        pass


async def test_baseline_body_over_body_ref_bytes_reaches_backend_whole(tmp_path: Path) -> None:
    text = "b" * (BODY_REF_BYTES + 1)
    row = {
        "id": "00000000-0000-0000-0000-000000000002",
        "activity_type": "a2a_receive",
        "source_id": PEER,
        "method": "message/send",
        "status": "ok",
        "request_body": text_message(text, context_id="big", message_id="m-big"),
    }
    posted: list[httpx.Request] = []

    def platform(request: httpx.Request) -> httpx.Response:
        posted.append(request)
        return httpx.Response(200, json={"status": "queued"})

    backend = RecordingBackend()
    async with httpx.AsyncClient(transport=httpx.MockTransport(platform)) as http:
        connector = BaselineConnector(
            http,
            platform_url=URL,
            workspace=CreatedWorkspace(id=WS, token="tok"),
            cursor_file=CursorFile(tmp_path / "cursor.json"),
            backend=backend,
        )
        assert await connector._handle(row)

    [request] = backend.requests
    assert request.text == text
    assert [p.text for p in request.message.parts] == [text]  # type: ignore[union-attr]
    [reply] = posted
    assert orjson.loads(reply.content)["params"]["message"]["contextId"] == "big"
    assert connector.counters["replied"] == 1
