"""POST /workspaces/{id}/a2a and /notify: normalize, queue, dedupe, echo (docs/protocol.md §3.4–3.5, §5)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.devplatform.harness import Harness, bearer

QUEUED = {"status": "queued", "delivery_mode": "poll", "method": "message/send"}


def send_body(message: dict[str, Any], **envelope: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": "req-1",
        "method": "message/send",
        "params": {"message": message},
        **envelope,
    }


async def stored_body(h: Harness, ws) -> dict[str, Any]:
    (row,) = await h.admin.rows(ws.id)
    return row["request_body"]


async def test_a2a_poll_target_queued_row_stored(platform: Harness) -> None:
    ws, peer = await platform.workspace("target"), await platform.workspace("peer")
    body = send_body({"role": "user", "messageId": "m-1", "contextId": "c-1", "parts": [{"kind": "text", "text": "x"}]})

    response = await platform.send(ws.id, body, sender=peer)

    assert response.status_code == 200
    assert response.json() == QUEUED
    (row,) = await platform.admin.rows(ws.id)
    assert (row["source_id"], row["target_id"], row["method"], row["status"]) == (
        peer.id,
        ws.id,
        "message/send",
        "ok",
    )
    assert row["request_body"] == body
    assert row["message_id"] == "m-1"


async def test_a2a_method_echoed_in_answer(platform: Harness) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    body = send_body({"messageId": "m", "parts": [{"kind": "text", "text": "x"}]}, method="message/stream")
    response = await platform.send(ws.id, body, sender=peer)
    assert response.json() == {**QUEUED, "method": "message/stream"}


async def test_a2a_no_jsonrpc_rewrapped(platform: Harness) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    message = {"role": "user", "messageId": "m", "parts": [{"kind": "text", "text": "x"}]}
    await platform.send(ws.id, {"method": "message/send", "params": {"message": message}}, sender=peer)
    stored = await stored_body(platform, ws)
    assert stored["jsonrpc"] == "2.0"
    assert uuid.UUID(stored["id"])
    assert stored["method"] == "message/send"
    assert stored["params"]["message"] == message


async def test_a2a_missing_message_id_and_role_filled(platform: Harness) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    await platform.send(ws.id, send_body({"parts": [{"kind": "text", "text": "x"}]}), sender=peer)
    message = (await stored_body(platform, ws))["params"]["message"]
    assert uuid.UUID(message["messageId"])
    assert message["role"] == "user"


@pytest.mark.parametrize(
    ("content", "parts"),
    [
        ("hello", [{"kind": "text", "text": "hello"}]),
        ([{"kind": "text", "text": "a"}, {"type": "data", "data": {"k": 1}}],
         [{"kind": "text", "text": "a"}, {"kind": "data", "data": {"k": 1}}]),
    ],
)  # fmt: skip
async def test_a2a_v02_content_becomes_parts(platform: Harness, content: Any, parts: list[Any]) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    response = await platform.send(ws.id, send_body({"messageId": "m", "content": content}), sender=peer)
    assert response.status_code == 200
    message = (await stored_body(platform, ws))["params"]["message"]
    assert message["parts"] == parts
    assert "content" not in message


@pytest.mark.parametrize("content", [42, True, {"text": "x"}, 1.5])
async def test_a2a_content_of_bad_type_400(platform: Harness, content: Any) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    response = await platform.send(ws.id, send_body({"messageId": "m", "content": content}), sender=peer)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid params.message.content type"}
    assert await platform.admin.rows(ws.id) == []


async def test_a2a_neither_parts_nor_content_400(platform: Harness) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    response = await platform.send(ws.id, send_body({"messageId": "m", "role": "user"}), sender=peer)
    assert response.status_code == 400
    assert response.json() == {"error": "params.message must contain either 'parts' (v0.3) or 'content' (v0.2 compat)"}


async def test_a2a_type_keyed_parts_renamed_kind(platform: Harness) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    parts = [
        {"type": "text", "text": "hi"},
        {"type": "file", "file": {"uri": "workspace:r.pdf", "mime_type": "application/pdf", "name": "r.pdf"}},
    ]
    await platform.send(ws.id, send_body({"messageId": "m", "parts": parts}), sender=peer)
    stored = (await stored_body(platform, ws))["params"]["message"]["parts"]
    assert stored == [
        {"kind": "text", "text": "hi"},
        {"kind": "file", "file": {"uri": "workspace:r.pdf", "mimeType": "application/pdf", "name": "r.pdf"}},
    ]


@pytest.mark.parametrize("raw", [b"", b"   ", b"\n\t", b'{"jsonrpc": "2.0", "method": "mess', b"not json", b"[1, 2]"])
async def test_a2a_invalid_json_400(platform: Harness, raw: bytes) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    response = await platform.send(ws.id, None, sender=peer, raw=raw)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid JSON"}


async def test_a2a_without_params_message_passed_through(platform: Harness) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    body = {"jsonrpc": "2.0", "id": "1", "method": "tasks/get", "params": {"id": "task-1"}}
    response = await platform.send(ws.id, body, sender=peer)
    assert response.json() == {**QUEUED, "method": "tasks/get"}
    assert await stored_body(platform, ws) == body


async def test_a2a_repeated_message_id_stored_once(platform: Harness) -> None:
    """A retried reply (same messageId) gets the same 200 and adds no row; the retry is counted."""
    ws, peer = await platform.workspace(), await platform.workspace()
    body = send_body({"messageId": "reply-1", "parts": [{"kind": "text", "text": "x"}]})
    first = await platform.send(ws.id, body, sender=peer)
    second = await platform.send(ws.id, {**body, "id": "req-2"}, sender=peer)
    assert first.json() == second.json() == QUEUED
    (row,) = await platform.admin.rows(ws.id)
    assert row["duplicates"] == 1
    assert row["request_body"]["id"] == "req-1"


async def test_a2a_same_message_id_other_target_stored(platform: Harness) -> None:
    a, b, peer = await platform.workspace(), await platform.workspace(), await platform.workspace()
    body = send_body({"messageId": "shared", "parts": [{"kind": "text", "text": "x"}]})
    await platform.send(a.id, body, sender=peer)
    await platform.send(b.id, body, sender=peer)
    assert len(await platform.admin.rows(a.id)) == len(await platform.admin.rows(b.id)) == 1


async def test_a2a_canvas_via_admin_token_source_null_context_filled(platform: Harness) -> None:
    ws = await platform.workspace()
    response = await platform.send(ws.id, send_body({"messageId": "m", "parts": [{"kind": "text", "text": "hi"}]}))
    assert response.json() == QUEUED
    (row,) = (await platform.poll(ws, source="canvas")).json()
    assert row["source_id"] is None
    assert row["request_body"]["params"]["message"]["contextId"] == f"canvas-{ws.id}"


async def test_a2a_canvas_keeps_given_context(platform: Harness) -> None:
    ws = await platform.workspace()
    await platform.send(ws.id, send_body({"messageId": "m", "contextId": "c", "parts": []}))
    assert (await stored_body(platform, ws))["params"]["message"]["contextId"] == "c"


async def test_a2a_peer_without_context_not_filled(platform: Harness) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    await platform.send(ws.id, send_body({"messageId": "m", "parts": []}), sender=peer)
    assert "contextId" not in (await stored_body(platform, ws))["params"]["message"]


async def test_a2a_x_workspace_id_mismatch_403(platform: Harness) -> None:
    ws, peer, other = await platform.workspace(), await platform.workspace(), await platform.workspace()
    response = await platform.http.post(
        f"/workspaces/{ws.id}/a2a",
        json=send_body({"messageId": "m", "parts": []}),
        headers={**bearer(peer.token), "X-Workspace-ID": other.id},
    )
    assert response.status_code == 403


async def test_a2a_x_workspace_id_matching_accepted(platform: Harness) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    response = await platform.http.post(
        f"/workspaces/{ws.id}/a2a",
        json=send_body({"messageId": "m", "parts": []}),
        headers={**bearer(peer.token), "X-Workspace-ID": peer.id},
    )
    assert response.status_code == 200


async def test_a2a_admin_token_with_x_workspace_id_403(platform: Harness) -> None:
    ws = await platform.workspace()
    response = await platform.http.post(
        f"/workspaces/{ws.id}/a2a",
        json=send_body({"messageId": "m", "parts": []}),
        headers={**bearer(platform.settings.admin_token), "X-Workspace-ID": ws.id},
    )
    assert response.status_code == 403


async def test_a2a_missing_or_bad_token_401(platform: Harness) -> None:
    ws = await platform.workspace()
    body = send_body({"messageId": "m", "parts": []})
    missing = await platform.http.post(f"/workspaces/{ws.id}/a2a", json=body)
    wrong = await platform.http.post(f"/workspaces/{ws.id}/a2a", json=body, headers=bearer("nope"))
    assert (missing.status_code, missing.json()) == (401, {"error": "missing workspace auth token"})
    assert (wrong.status_code, wrong.json()) == (401, {"error": "invalid workspace auth token"})


async def test_a2a_unknown_target_404(platform: Harness) -> None:
    peer = await platform.workspace()
    response = await platform.send(str(uuid.uuid4()), send_body({"messageId": "m", "parts": []}), sender=peer)
    assert response.status_code == 404


async def test_a2a_removed_target_410(platform: Harness) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    await platform.admin.remove_workspace(ws.id)
    response = await platform.send(ws.id, send_body({"messageId": "m", "parts": []}), sender=peer)
    assert response.status_code == 410


async def test_a2a_body_over_cap_413(make_platform) -> None:
    async with make_platform(max_body_bytes=1024) as h:
        ws, peer = await h.workspace(), await h.workspace()
        big = send_body({"messageId": "m", "parts": [{"kind": "text", "text": "x" * 2000}]})
        response = await h.send(ws.id, big, sender=peer)
        assert response.status_code == 413
        assert await h.admin.rows(ws.id) == []


async def test_a2a_default_cap_is_16_mib(platform: Harness) -> None:
    assert platform.settings.max_body_bytes == 16 * 1024 * 1024


async def test_notify_echo_row_in_own_inbox(platform: Harness) -> None:
    ws = await platform.workspace()
    response = await platform.http.post(
        f"/workspaces/{ws.id}/notify",
        json={"message": "done!", "attachments": [{"uri": "workspace:a.txt", "name": "a.txt"}]},
        headers=bearer(ws.token),
    )
    assert (response.status_code, response.json()) == (200, {"status": "sent"})
    (row,) = (await platform.poll(ws, type="a2a_receive")).json()
    assert row["method"] == "notify"
    assert row["source_id"] is None
    assert row["response_body"] == {"result": "done!"}
    assert row["request_body"]["message"] == "done!"
    assert row["request_body"]["attachments"] == [{"uri": "workspace:a.txt", "name": "a.txt"}]


@pytest.mark.parametrize("body", [b"{}", b'{"message": ""}', b'{"message": 3}', b"nope"])
async def test_notify_without_message_400(platform: Harness, body: bytes) -> None:
    ws = await platform.workspace()
    response = await platform.http.post(f"/workspaces/{ws.id}/notify", content=body, headers=bearer(ws.token))
    assert (response.status_code, response.json()) == (400, {"error": "message is required"})


async def test_notify_other_workspace_403(platform: Harness) -> None:
    ws, other = await platform.workspace(), await platform.workspace()
    response = await platform.http.post(
        f"/workspaces/{ws.id}/notify", json={"message": "x"}, headers=bearer(other.token)
    )
    assert response.status_code == 403
