"""The devplatform over real loopback HTTP, through RunningPlatform and the sync/async clients."""

from __future__ import annotations

from pathlib import Path

import httpx

from devplatform.client import AsyncPlatformAdmin
from devplatform.server import RunningPlatform
from devplatform.settings import PlatformSettings


def test_running_platform_loopback_full_round_trip(tmp_path: Path) -> None:
    """Register, receive a peer message, reply by notify; then restart on the same file and keep every row."""
    settings = PlatformSettings(db_path=tmp_path / "loop.db", require_tenant_headers=True)
    platform = RunningPlatform(settings)
    with platform, platform.admin() as admin:
        assert platform.url.startswith("http://127.0.0.1:")
        assert platform.settings is settings
        ws, peer = admin.create_workspace("me"), admin.create_workspace("peer")
        headers = {"Authorization": f"Bearer {ws.token}", "Origin": platform.url}
        with httpx.Client(base_url=platform.url, headers=headers) as http:
            registered = http.post(
                "/registry/register", json={"id": ws.id, "delivery_mode": "poll", "agent_card": {"name": "t"}}
            )
            assert registered.json() == {"status": "registered", "delivery_mode": "poll"}
            assert admin.send_text(ws.id, "ping", sender=peer)["status"] == "queued"
            (row,) = http.get(f"/workspaces/{ws.id}/activity", params={"type": "a2a_receive"}).json()
            assert row["source_id"] == peer.id
            assert http.post(f"/workspaces/{ws.id}/notify", json={"message": "pong"}).json() == {"status": "sent"}
        assert [r["method"] for r in admin.inbox(ws.id, ws.token, since_id=row["id"])] == ["notify"]
        assert admin.workspace(ws.id)["status"] == "online"
        port = platform.port

    restarted = RunningPlatform(settings, port=port)
    with restarted, restarted.admin() as admin:
        assert restarted.url == f"http://127.0.0.1:{port}"
        assert len(admin.rows(ws.id)) == 2


async def test_running_platform_async_context_manager(tmp_path: Path) -> None:
    async with RunningPlatform(PlatformSettings(db_path=tmp_path / "a.db")) as platform:
        async with AsyncPlatformAdmin(platform.url) as admin:
            ws = await admin.create_workspace("async")
            await admin.send_text(ws.id, "hello")
            (row,) = await admin.inbox(ws.id, ws.token, type="a2a_receive", source="canvas")
            assert row["request_body"]["params"]["message"]["contextId"] == f"canvas-{ws.id}"


def test_running_platform_default_settings_temp_db_removed_on_close() -> None:
    platform = RunningPlatform()
    with platform:
        db_path = platform.settings.db_path
        assert db_path.exists()
    assert not db_path.exists()
