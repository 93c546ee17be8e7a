"""Payload encryption end to end: a connector delivers with the codec on, history holds no message text, replay
with the codec works; and the Web UI codec server over HTTP."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import httpx
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHistory

from tests.helpers import Harness, reply_text, wait_until
from worker.codec import ENCODING, CodecKey, EncryptionCodec, codec_app, with_codec
from worker.replay import replay
from worker.settings import workflow_id

KEY = CodecKey(key_id="test-2026", key=bytes(range(32)))
SECRET = "the launch code is 7781"


def raw_bytes(history: WorkflowHistory) -> bytes:
    """Every event as protobuf bytes: a plain JSON payload would show its text here verbatim."""
    return b"".join(event.SerializeToString() for event in history.events)


@pytest.fixture
def codec() -> EncryptionCodec:
    return EncryptionCodec([KEY])


@pytest.fixture
def codec_client(client: Client, codec: EncryptionCodec) -> Client:
    return Client(**{**client.config(), "data_converter": with_codec(codec)})


@pytest.fixture
def encrypted(harness: Harness, codec_client: Client) -> Harness:
    """The test's harness, with a client (and so workers) using the codec."""
    return dataclasses.replace(harness, client=codec_client)


async def test_codec_delivery_history_holds_no_message_text_and_replays(
    encrypted: Harness, client: Client, codec: EncryptionCodec
) -> None:
    """The worker and starter use the codec; the history fetched by a client without it shows only ciphertext."""
    agent, peer = await encrypted.workspace("agent"), await encrypted.workspace("peer")
    async with encrypted.worker():
        await encrypted.start(agent)
        await encrypted.admin.send_text(agent.id, SECRET, sender=peer)
        [reply] = await wait_until(lambda: encrypted.replies_to(peer.id, agent.id), message="reply")
        assert reply_text(reply) == f"echo: {SECRET}"
        await wait_until(lambda: _replied(encrypted, agent.id), message="reply recorded")

    history = await client.get_workflow_handle(workflow_id(agent.id)).fetch_history()
    raw = raw_bytes(history)
    assert ENCODING in raw
    leaks = [event for event in history.events if SECRET.encode() in event.SerializeToString()]
    assert not leaks, leaks[:1]

    [ok] = await replay([("encrypted", history)], data_converter=with_codec(codec))
    assert ok.ok, ok.error
    [without] = await replay([("encrypted", history)])
    assert not without.ok  # the codec is needed to read it


async def test_codec_worker_runs_connector_started_with_plain_json(harness: Harness, encrypted: Harness) -> None:
    """A connector started without the codec (as ``temporal workflow start`` does) runs on an encrypting worker."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    await harness.client.start_workflow(
        "ConnectWorkflow", harness.input(agent), id=workflow_id(agent.id), task_queue=harness.task_queue
    )
    async with encrypted.worker():
        await wait_until(lambda: encrypted._seeded(agent.id), message="cold start")
        await encrypted.admin.send_text(agent.id, SECRET, sender=peer)
        [reply] = await wait_until(lambda: encrypted.replies_to(peer.id, agent.id), message="reply")
    assert reply_text(reply) == f"echo: {SECRET}"


async def _replied(harness: Harness, workspace_id: str) -> bool:
    return (await harness.status(workspace_id)).counters["replied"] >= 1


# --- codec server ------------------------------------------------------------------------------------------------

UI = "http://localhost:8233"


def proto_json(*payloads: dict[str, Any]) -> dict[str, Any]:
    return {"payloads": list(payloads)}


def plain_payload(text: str) -> dict[str, Any]:
    return {
        "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
        "data": base64.b64encode(f'"{text}"'.encode()).decode(),
    }


@pytest.fixture
async def codec_http(codec: EncryptionCodec):
    transport = httpx.ASGITransport(app=codec_app(codec, cors_origins=[UI]))
    async with httpx.AsyncClient(transport=transport, base_url="http://codec.test") as http:
        yield http


async def test_codec_server_encode_then_decode_round_trips(codec_http: httpx.AsyncClient) -> None:
    headers = {"Origin": UI, "X-Namespace": "default"}
    encoded = await codec_http.post("/encode", json=proto_json(plain_payload(SECRET)), headers=headers)
    assert encoded.status_code == 200
    assert encoded.headers["access-control-allow-origin"] == UI
    [payload] = encoded.json()["payloads"]
    assert base64.b64decode(payload["metadata"]["encoding"]) == ENCODING
    assert base64.b64decode(payload["metadata"]["encryption-key-id"]) == b"test-2026"
    assert SECRET.encode() not in base64.b64decode(payload["data"])

    decoded = await codec_http.post("/decode", json=encoded.json(), headers=headers)
    assert decoded.status_code == 200
    assert decoded.json() == proto_json(plain_payload(SECRET))


async def test_codec_server_decode_plain_payload_unchanged(codec_http: httpx.AsyncClient) -> None:
    body = proto_json(plain_payload("hello"))
    decoded = await codec_http.post("/decode", json=body)
    assert decoded.json() == body


async def test_codec_server_preflight_allows_ui_origin_only(codec_http: httpx.AsyncClient) -> None:
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-namespace"}
    allowed = await codec_http.options("/decode", headers={"Origin": UI, **ask})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == UI
    refused = await codec_http.options("/decode", headers={"Origin": "http://evil.test", **ask})
    assert "access-control-allow-origin" not in refused.headers


async def test_codec_server_unknown_key_or_bad_body_is_400_with_error(codec_http: httpx.AsyncClient) -> None:
    other = EncryptionCodec([CodecKey(key_id="other", key=bytes(32))])
    [foreign] = await other.encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')])
    body = {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in foreign.metadata.items()},
                "data": base64.b64encode(foreign.data).decode(),
            }
        ]
    }
    unknown = await codec_http.post("/decode", json=body)
    assert unknown.status_code == 400 and "key id 'other'" in unknown.json()["error"]
    bad = await codec_http.post("/decode", content=b"not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]
