"""The startup capability probe (docs/protocol.md §3.3) against the devplatform over loopback, and a MockTransport for
the answers a current platform never gives (``200`` from a platform without ``since_id``, ``503``)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import worker.cli.common
from activities.probe import ZERO_CURSOR, PlatformProbeError, probe_platform
from devplatform.client import AsyncPlatformAdmin, CreatedWorkspace
from devplatform.server import RunningPlatform
from devplatform.settings import PlatformSettings
from worker.cli import main


async def test_probe_devplatform_supports_cursor_passes(platform: RunningPlatform, admin: AsyncPlatformAdmin):
    workspace = await admin.create_workspace("probe")
    assert workspace.token is not None

    await probe_platform(platform.url, workspace.id, workspace.token)


async def test_probe_wrong_token_refused_with_token_advice(platform: RunningPlatform, admin: AsyncPlatformAdmin):
    workspace = await admin.create_workspace("probe")

    with pytest.raises(PlatformProbeError) as caught:
        await probe_platform(platform.url, workspace.id, "not-the-token")

    message = str(caught.value)
    assert message.startswith(f"token rejected by platform at {platform.url} (HTTP 401)")
    assert "MOLECULE_WORKSPACE_TOKEN" in message
    assert "not-the-token" not in message


async def test_probe_other_workspaces_token_refused_403(platform: RunningPlatform, admin: AsyncPlatformAdmin):
    mine, theirs = await admin.create_workspace("mine"), await admin.create_workspace("theirs")
    assert theirs.token is not None

    with pytest.raises(PlatformProbeError, match=rf"^token does not grant access to workspace {mine.id} .*HTTP 403"):
        await probe_platform(platform.url, mine.id, theirs.token)


async def test_probe_hosted_platform_needs_org_id_when_origin_is_not_accepted(tmp_path: Path):
    """A hosted platform answers 404 unless Origin is its public URL or X-Molecule-Org-Id is sent."""
    settings = PlatformSettings(
        db_path=tmp_path / "hosted.db",
        rate_limit_per_min=0,
        require_tenant_headers=True,
        public_url="https://app.molecule.example",
    )
    async with RunningPlatform(settings) as hosted:
        async with AsyncPlatformAdmin(hosted.url, admin_token=settings.admin_token) as admin:
            workspace = await admin.create_workspace("hosted")
        assert workspace.token is not None

        with pytest.raises(PlatformProbeError, match="not found .*HTTP 404.*set MOLECULE_ORG_ID"):
            await probe_platform(hosted.url, workspace.id, workspace.token)
        await probe_platform(hosted.url, workspace.id, workspace.token, org_id="org-1")


def _recording(status: int, body: object, seen: list[httpx.Request]) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_probe_platform_without_since_id_answers_200_refused_as_too_old():
    seen: list[httpx.Request] = []
    rows = [{"id": "5c0e0000-0000-0000-0000-000000000001", "activity_type": "a2a_receive"}]

    async with _recording(200, rows, seen) as http:
        with pytest.raises(PlatformProbeError) as caught:
            await probe_platform("https://old.example", "ws-1", "tok", org_id="org-7", http=http)

    assert str(caught.value) == (
        "platform at https://old.example is too old for poll mode (no since_id cursor support); upgrade it"
    )
    [request] = seen
    assert request.url.path == "/workspaces/ws-1/activity"
    assert dict(request.url.params) == {"since_id": ZERO_CURSOR, "limit": "1"}
    assert request.headers["authorization"] == "Bearer tok"
    assert request.headers["origin"] == "https://old.example"
    assert request.headers["x-molecule-org-id"] == "org-7"


async def test_probe_without_org_id_sends_no_org_header():
    seen: list[httpx.Request] = []

    async with _recording(410, {"error": "since_id cursor not found"}, seen) as http:
        await probe_platform("https://new.example", "ws-1", "tok", http=http)

    assert "x-molecule-org-id" not in seen[0].headers


async def test_probe_unexpected_status_refused_with_retry_advice():
    async with _recording(503, {"error": "restarting"}, []) as http:
        with pytest.raises(PlatformProbeError) as caught:
            await probe_platform("https://busy.example", "ws-1", "tok", http=http)

    assert str(caught.value) == (
        'platform at https://busy.example answered the capability probe with HTTP 503 {"error":"restarting"}; '
        "try again, or pass --no-probe to skip the check"
    )


async def test_probe_connection_refused_is_one_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    with pytest.raises(PlatformProbeError) as caught:
        await probe_platform(url, "ws-1", "tok")

    message = str(caught.value)
    assert message.startswith(f"cannot reach the platform at {url}: ")
    assert message.endswith("check --platform-url / MOLECULE_API_URL")
    assert "\n" not in message


# --- the probe in `molecule-connect run` ---------------------------------------------------------------------------

REFUSED_TEMPORAL = "127.0.0.1:1"
"""Nothing listens here: a `run` that gets past the probe fails fast on Temporal instead of starting a server."""


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("MOLECULE_", "TEMPORAL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MOLECULE_CONNECT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("TEMPORAL_ADDRESS", REFUSED_TEMPORAL)


@pytest.fixture
def sync_platform(tmp_path: Path) -> Iterator[tuple[RunningPlatform, CreatedWorkspace]]:
    """A devplatform and one workspace, for the synchronous CLI (it runs its own event loop)."""
    with RunningPlatform(PlatformSettings(db_path=tmp_path / "cli.db", rate_limit_per_min=0)) as running:
        with running.admin() as admin:
            yield running, admin.create_workspace("cli")


def _run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int | str | None, list[str]]:
    try:
        main(["run", *args])
        code: int | str | None = 0
    except SystemExit as exit:
        code = exit.code
    _, err = capsys.readouterr()
    return code, [line for line in err.splitlines() if line.startswith("molecule-connect: ")]


def test_run_probe_rejected_token_exits_2_before_temporal(
    cli_env, sync_platform, capsys, monkeypatch: pytest.MonkeyPatch
):
    platform, workspace = sync_platform
    monkeypatch.setenv("MOLECULE_WORKSPACE_TOKEN", "wrong-token")

    code, errors = _run_cli(capsys, workspace.id, "--platform-url", platform.url)

    assert code == 2
    assert len(errors) == 1
    assert errors[0].startswith(f"molecule-connect: token rejected by platform at {platform.url} (HTTP 401)")


def test_run_probe_passes_on_devplatform_then_needs_temporal(
    cli_env, sync_platform, capsys, monkeypatch: pytest.MonkeyPatch
):
    platform, workspace = sync_platform
    assert workspace.token is not None
    monkeypatch.setenv("MOLECULE_WORKSPACE_TOKEN", workspace.token)

    code, errors = _run_cli(capsys, workspace.id, "--platform-url", platform.url)

    assert code == 2
    assert len(errors) == 1 and REFUSED_TEMPORAL in errors[0]


def test_run_no_probe_skips_the_check(cli_env, sync_platform, capsys, monkeypatch: pytest.MonkeyPatch):
    platform, workspace = sync_platform
    monkeypatch.setenv("MOLECULE_WORKSPACE_TOKEN", "wrong-token")

    code, errors = _run_cli(capsys, workspace.id, "--platform-url", platform.url, "--no-probe")

    assert code == 2
    assert len(errors) == 1 and REFUSED_TEMPORAL in errors[0]


def test_run_probe_platform_too_old_exits_2_one_line(cli_env, capsys, monkeypatch: pytest.MonkeyPatch):
    """A platform that ignores since_id answers 200 with rows: `run` refuses to start."""
    seen: list[httpx.Request] = []
    real_probe = probe_platform

    async def probe_old_platform(*args: Any, **kwargs: Any) -> None:
        async with _recording(200, [], seen) as http:
            await real_probe(*args, **kwargs, http=http)

    monkeypatch.setattr(worker.cli.common, "probe_platform", probe_old_platform)
    monkeypatch.setenv("MOLECULE_WORKSPACE_TOKEN", "tok")
    monkeypatch.setenv("MOLECULE_ORG_ID", "org-3")

    code, errors = _run_cli(capsys, "ws-1", "--platform-url", "https://old.example/")

    assert code == 2
    assert errors == [
        "molecule-connect: platform at https://old.example is too old for poll mode (no since_id cursor support); "
        "upgrade it"
    ]
    assert seen[0].headers["x-molecule-org-id"] == "org-3"
