"""Bearer auth, workspace status, the tenant rule and the rate limit (docs/protocol.md §2, §3.6)."""

from __future__ import annotations

import uuid

import pytest

from devplatform.ratelimit import RateLimiter
from tests.devplatform.harness import Harness, bearer


async def test_workspace_status_own_bearer_200(platform: Harness) -> None:
    ws = await platform.workspace("mine")
    response = await platform.http.get(f"/workspaces/{ws.id}", headers=bearer(ws.token))
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["name"], body["status"], body["delivery_mode"]) == (
        ws.id, "mine", "awaiting_agent", "poll"
    )  # fmt: skip
    assert "last_heartbeat_at" in body
    assert not any("token" in key for key in body)


async def test_workspace_removed_410_then_own_calls_404(platform: Harness) -> None:
    ws = await platform.workspace()
    removed = await platform.admin.remove_workspace(ws.id)

    status = await platform.http.get(f"/workspaces/{ws.id}", headers=bearer(ws.token))
    inbox = await platform.poll(ws)
    notify = await platform.http.post(f"/workspaces/{ws.id}/notify", json={"message": "x"}, headers=bearer(ws.token))

    assert status.status_code == 410
    assert status.json()["id"] == ws.id
    assert status.json()["removed_at"] == removed["removed_at"]
    assert status.json()["hint"]
    assert inbox.status_code == 404
    assert notify.status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", ""), ("GET", "/activity"), ("POST", "/activity"), ("POST", "/notify")],
)
async def test_workspace_routes_missing_token_401(platform: Harness, method: str, path: str) -> None:
    ws = await platform.workspace()
    response = await platform.http.request(method, f"/workspaces/{ws.id}{path}", json={"message": "x"})
    assert (response.status_code, response.json()) == (401, {"error": "missing workspace auth token"})


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", ""), ("GET", "/activity"), ("POST", "/activity"), ("POST", "/notify")],
)
async def test_workspace_routes_invalid_token_401(platform: Harness, method: str, path: str) -> None:
    ws = await platform.workspace()
    response = await platform.http.request(
        method, f"/workspaces/{ws.id}{path}", json={"message": "x"}, headers=bearer("wrong")
    )
    assert (response.status_code, response.json()) == (401, {"error": "invalid workspace auth token"})


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", ""), ("GET", "/activity"), ("POST", "/activity"), ("POST", "/notify")],
)
async def test_workspace_routes_other_workspace_token_403(platform: Harness, method: str, path: str) -> None:
    ws, other = await platform.workspace(), await platform.workspace()
    response = await platform.http.request(
        method, f"/workspaces/{ws.id}{path}", json={"message": "x"}, headers=bearer(other.token)
    )
    assert response.status_code == 403


async def test_token_rotated_old_401_new_200(platform: Harness) -> None:
    """Rotation lets a test break a connector's token and then fix it."""
    ws = await platform.workspace()
    new_token = await platform.admin.set_token(ws.id)
    old = await platform.http.get(f"/workspaces/{ws.id}/activity", headers=bearer(ws.token))
    new = await platform.http.get(f"/workspaces/{ws.id}/activity", headers=bearer(new_token))
    assert (old.status_code, old.json()) == (401, {"error": "invalid workspace auth token"})
    assert new.status_code == 200


async def test_admin_wrong_token_401(platform: Harness) -> None:
    missing = await platform.http.post("/admin/workspaces", json={"name": "x"})
    wrong = await platform.http.post("/admin/workspaces", json={"name": "x"}, headers=bearer("nope"))
    ws = await platform.workspace()
    workspace_token = await platform.http.get(f"/admin/workspaces/{ws.id}", headers=bearer(ws.token))
    assert missing.status_code == wrong.status_code == workspace_token.status_code == 401


async def test_tenant_rule_no_headers_404_empty_body(make_platform) -> None:
    async with make_platform(require_tenant_headers=True) as h:
        ws = await h.workspace()
        bare = await h.poll(ws)
        with_origin = await h.http.get(
            f"/workspaces/{ws.id}/activity", headers={**bearer(ws.token), "Origin": "http://anything"}
        )
        with_org = await h.http.get(
            f"/workspaces/{ws.id}/activity", headers={**bearer(ws.token), "X-Molecule-Org-Id": "org-1"}
        )
        unauthenticated = await h.http.get(f"/workspaces/{ws.id}")
        assert (bare.status_code, bare.content) == (404, b"")
        assert (unauthenticated.status_code, unauthenticated.content) == (404, b"")
        assert with_origin.status_code == with_org.status_code == 200


async def test_tenant_rule_registry_not_affected(make_platform) -> None:
    async with make_platform(require_tenant_headers=True) as h:
        ws = await h.workspace()
        response = await h.http.post("/registry/heartbeat", json={"workspace_id": ws.id}, headers=bearer(ws.token))
        assert response.status_code == 200


async def test_tenant_rule_public_url_origin_must_match(make_platform) -> None:
    async with make_platform(require_tenant_headers=True, public_url="https://acme.molecule.test/") as h:
        ws = await h.workspace()
        wrong = await h.http.get(f"/workspaces/{ws.id}", headers={**bearer(ws.token), "Origin": "https://evil.test"})
        right = await h.http.get(
            f"/workspaces/{ws.id}", headers={**bearer(ws.token), "Origin": "https://acme.molecule.test"}
        )
        assert (wrong.status_code, right.status_code) == (404, 200)


async def test_tenant_rule_off_by_default(platform: Harness) -> None:
    ws = await platform.workspace()
    assert (await platform.poll(ws)).status_code == 200


async def test_rate_limit_exceeded_429_with_retry_after(make_platform) -> None:
    async with make_platform(rate_limit_per_min=3) as h:
        ws = await h.workspace()
        answers = [await h.poll(ws) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        limited = answers[-1]
        assert limited.json()["error"] == "rate limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        # The admin API is exempt.
        assert (await h.admin.workspace(ws.id))["id"] == ws.id


async def test_rate_limit_zero_disables(make_platform) -> None:
    async with make_platform(rate_limit_per_min=0) as h:
        ws = await h.workspace()
        codes = {(await h.http.get(f"/workspaces/{ws.id}", headers=bearer(ws.token))).status_code for _ in range(30)}
        assert codes == {200}


def test_rate_limiter_window_slides() -> None:
    now = [0.0]
    limiter = RateLimiter(2, window_s=60, clock=lambda: now[0])
    assert limiter.hit("ip") is None
    now[0] = 10
    assert limiter.hit("ip") is None
    assert limiter.hit("ip") == pytest.approx(50)
    assert limiter.hit("other-ip") is None
    now[0] = 60.5
    assert limiter.hit("ip") is None
    assert limiter.hit("ip") == pytest.approx(9.5)


async def test_unknown_route_json_error(platform: Harness) -> None:
    response = await platform.http.get(f"/nowhere/{uuid.uuid4()}")
    assert response.status_code == 404
    assert "error" in response.json()
