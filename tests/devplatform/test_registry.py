"""register, heartbeat and the stale sweep (docs/protocol.md §3.1–3.2, §1.6)."""

from __future__ import annotations

import pytest

from devplatform.routes.registry import heartbeat_status
from tests.devplatform.harness import FakeClock, Harness, bearer, wait_until

CARD = {"name": "molecule-connect", "description": "test", "version": "0"}


async def register(h: Harness, workspace_id: str, token: str | None, **body: object):
    headers = {} if token is None else bearer(token)
    return await h.http.post(
        "/registry/register",
        json={"id": workspace_id, "delivery_mode": "poll", "agent_card": CARD, **body},
        headers=headers,
    )


async def beat(h: Harness, workspace_id: str, token: str | None, **body: object):
    return await h.http.post("/registry/heartbeat", json={"workspace_id": workspace_id, **body}, headers=bearer(token))


async def test_register_poll_workspace_goes_online(platform: Harness) -> None:
    ws = await platform.workspace()
    assert (await platform.admin.workspace(ws.id))["status"] == "awaiting_agent"

    response = await register(platform, ws.id, ws.token)

    assert response.status_code == 200
    assert response.json() == {"status": "registered", "delivery_mode": "poll"}
    status = await platform.admin.workspace(ws.id)
    assert status["status"] == "online"
    assert status["last_heartbeat_at"] is not None
    assert status["agent_card"] == CARD


async def test_register_without_delivery_mode_uses_poll_for_external(platform: Harness) -> None:
    ws = await platform.workspace()
    response = await platform.http.post(
        "/registry/register", json={"id": ws.id, "agent_card": CARD}, headers=bearer(ws.token)
    )
    assert response.json()["delivery_mode"] == "poll"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "invalid request body"),
        (b'{"delivery_mode": "poll", "agent_card": {}}', "invalid request body"),
        (b'{"id": "x", "delivery_mode": "poll"}', "invalid request body"),
    ],
)
async def test_register_bad_body_400_invalid_request_body(platform: Harness, body: bytes, error: str) -> None:
    ws = await platform.workspace()
    response = await platform.http.post("/registry/register", content=body, headers=bearer(ws.token))
    assert response.status_code == 400
    assert response.json() == {"error": error}


async def test_register_unknown_delivery_mode_400(platform: Harness) -> None:
    ws = await platform.workspace()
    response = await register(platform, ws.id, ws.token, delivery_mode="carrier-pigeon")
    assert response.status_code == 400


async def test_register_push_without_url_400(platform: Harness) -> None:
    ws = await platform.workspace()
    response = await register(platform, ws.id, ws.token, delivery_mode="push")
    assert response.status_code == 400


async def test_register_bad_token_401(platform: Harness) -> None:
    ws = await platform.workspace()
    assert (await register(platform, ws.id, None)).json() == {"error": "missing workspace auth token"}
    response = await register(platform, ws.id, "nope")
    assert response.status_code == 401
    assert response.json() == {"error": "invalid workspace auth token"}


async def test_register_removed_workspace_404_not_resurrected(platform: Harness) -> None:
    ws = await platform.workspace()
    await platform.admin.remove_workspace(ws.id)

    response = await register(platform, ws.id, ws.token)

    assert response.status_code == 404
    assert (await platform.admin.workspace(ws.id))["status"] == "removed"


async def test_register_bootstrap_returns_auth_token_once(platform: Harness) -> None:
    """A token-less workspace gets its token from its first register; later registers need it."""
    ws = await platform.admin.create_workspace("boot", issue_token=False)
    assert ws.token is None

    first = await register(platform, ws.id, None)
    token = first.json()["auth_token"]
    again = await register(platform, ws.id, None)
    with_token = await register(platform, ws.id, token)

    assert first.status_code == 200
    assert again.status_code == 401
    assert with_token.status_code == 200
    assert "auth_token" not in with_token.json()


async def test_heartbeat_awaiting_agent_goes_online(platform: Harness) -> None:
    ws = await platform.workspace()
    response = await beat(platform, ws.id, ws.token, active_tasks=1, current_task="x", uptime_seconds=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    status = await platform.admin.workspace(ws.id)
    assert (status["status"], status["active_tasks"], status["current_task"]) == ("online", 1, "x")


async def test_heartbeat_error_rate_degrades_and_recovers(platform: Harness) -> None:
    """error_rate ≥ 0.5 degrades; a non-empty runtime_state blocks recovery; < 0.1 with none recovers."""
    ws = await platform.workspace()
    statuses = []
    for body in (
        {"error_rate": 0.0},
        {"error_rate": 0.6},
        {"error_rate": 0.0, "runtime_state": "ok"},
        {"error_rate": 0.2},
        {"error_rate": 0.05, "runtime_state": ""},
    ):
        assert (await beat(platform, ws.id, ws.token, **body)).status_code == 200
        statuses.append((await platform.admin.workspace(ws.id))["status"])
    assert statuses == ["online", "degraded", "degraded", "degraded", "online"]


async def test_heartbeat_missing_workspace_id_400(platform: Harness) -> None:
    ws = await platform.workspace()
    response = await platform.http.post("/registry/heartbeat", json={"error_rate": 0}, headers=bearer(ws.token))
    assert response.status_code == 400
    assert response.json() == {"error": "invalid request body"}


async def test_heartbeat_other_workspace_token_403(platform: Harness) -> None:
    ws, other = await platform.workspace("a"), await platform.workspace("b")
    assert (await beat(platform, ws.id, other.token)).status_code == 403


@pytest.mark.parametrize(
    ("current", "error_rate", "runtime_state", "expected"),
    [
        ("awaiting_agent", None, None, "online"),
        ("offline", 0.0, "", "online"),
        ("provisioning", 0.0, None, "online"),
        ("online", 0.5, None, "degraded"),
        ("online", 0.49, None, "online"),
        ("online", 0.0, "wedged", "degraded"),
        ("awaiting_agent", 0.9, None, "degraded"),
        ("degraded", 0.09, None, "online"),
        ("degraded", 0.1, None, "degraded"),
        ("degraded", 0.0, "ok", "degraded"),
        ("degraded", 0.0, "wedged", "degraded"),
        ("paused", 0.0, None, "paused"),
    ],
)
def test_heartbeat_status_rules_table(
    current: str, error_rate: float | None, runtime_state: str | None, expected: str
) -> None:
    assert heartbeat_status(current, error_rate=error_rate, runtime_state=runtime_state) == expected


async def test_sweep_after_stale_window_awaiting_agent(clocked: Harness, clock: FakeClock) -> None:
    """With the production 90 s window: 89 s of silence is fine, 91 s is stale; a heartbeat revives."""
    ws = await clocked.workspace()
    await register(clocked, ws.id, ws.token)

    clock.advance(89)
    assert await clocked.admin.sweep() == []
    clock.advance(2)
    assert await clocked.admin.sweep() == [ws.id]
    assert (await clocked.admin.workspace(ws.id))["status"] == "awaiting_agent"

    await beat(clocked, ws.id, ws.token)
    assert (await clocked.admin.workspace(ws.id))["status"] == "online"


async def test_sweep_ignores_removed_and_never_registered(clocked: Harness, clock: FakeClock) -> None:
    ws, gone = await clocked.workspace("idle"), await clocked.workspace("gone")
    await register(clocked, gone.id, gone.token)
    await clocked.admin.remove_workspace(gone.id)
    clock.advance(3600)
    assert await clocked.admin.sweep() == []
    assert (await clocked.admin.workspace(ws.id))["status"] == "awaiting_agent"


async def test_sweep_lifespan_loop_short_window_awaiting_agent(make_platform) -> None:
    """The lifespan's periodic sweep, with a short stale window, sends a silent workspace back."""
    async with make_platform(stale_after_s=0.5, sweep_every_s=0.05) as h:
        ws = await h.workspace()
        await register(h, ws.id, ws.token)
        assert (await h.admin.workspace(ws.id))["status"] == "online"

        async def stale() -> bool:
            return (await h.admin.workspace(ws.id))["status"] == "awaiting_agent"

        await wait_until(stale, timeout=5)


async def test_liveness_log_records_accepted_beats_and_stale_sweeps(clocked: Harness, clock: FakeClock) -> None:
    """Accepted registers and heartbeats, and the sweep's move to awaiting_agent, are logged in order."""
    ws, other = await clocked.workspace("ws"), await clocked.workspace("other")
    await register(clocked, ws.id, ws.token)
    clock.advance(30)
    await beat(clocked, ws.id, ws.token, error_rate=0.6)
    assert (await beat(clocked, ws.id, other.token)).status_code == 403  # refused: not logged
    clock.advance(91)
    assert await clocked.admin.sweep() == [ws.id]
    await beat(clocked, ws.id, ws.token)

    log = await clocked.admin.liveness(ws.id)
    assert [(e["event"], e["status"]) for e in log] == [
        ("register", "online"),
        ("heartbeat", "degraded"),
        ("stale", "awaiting_agent"),
        ("heartbeat", "online"),
    ]
    assert [e["at"] for e in log] == sorted(e["at"] for e in log)
    assert log[1]["at"][:19] != log[0]["at"][:19]  # 30 s apart on the platform's clock
    assert await clocked.admin.liveness(other.id) == []
