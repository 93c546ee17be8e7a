"""``molecule-connect status`` without a workspace id: every running connector from visibility, one row each."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.helpers import Harness, new_task_queue, wait_until
from worker import control
from worker.control import start_connector

CLI = Path(sys.executable).with_name("molecule-connect")


@pytest.fixture
def cli_env(temporal_env: WorkflowEnvironment, tmp_path: Path) -> dict[str, str]:
    """The environment of a ``molecule-connect`` process pointed at the test server, with no user state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "MOLECULE_"))}
    env.update(
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        TEMPORAL_NAMESPACE=temporal_env.client.namespace,
        MOLECULE_CONNECT_STATE_DIR=str(tmp_path / "state"),
        HOME=str(tmp_path),
        XDG_CONFIG_HOME=str(tmp_path / ".config"),
    )
    return env


async def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(CLI), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_status_without_id_lists_running_connectors_as_table_and_json(
    harness: Harness, cli_env: dict[str, str]
) -> None:
    busy, idle, peer = [await harness.workspace(name) for name in ("busy", "idle", "peer")]
    async with harness.worker():
        await harness.start(busy)
        await harness.start(idle)
        await harness.admin.send_text(busy.id, "hello", sender=peer, context_id="c1")
        await wait_until(lambda: harness.replies_to(peer.id, busy.id), message="a delivery")
        await wait_until(lambda: _delivered(harness, busy.id), message="last delivery recorded")

        running = {c.workspace_id for c in await control.list_connectors(harness.client)}
        table, listing = await asyncio.gather(
            cli(cli_env, "status", "--task-queue", harness.task_queue),
            cli(cli_env, "status", "--task-queue", harness.task_queue, "--json"),
        )

    assert {busy.id, idle.id} <= running  # unfiltered: every running connector in the namespace
    code, out, err = table
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["WORKSPACE", "PHASE", "LAG", "IN", "FLIGHT", "DEAD", "LAST", "DELIVERY", "LAST", "ERROR"]
    by_id = {row.split()[0]: row for row in rows}
    assert set(by_id) == {busy.id, idle.id}
    assert re.fullmatch(rf"{busy.id}\s+connected\s+0\s+0\s+0\s+\d+s ago\s+-", by_id[busy.id])
    assert re.fullmatch(rf"{idle.id}\s+connected\s+0\s+0\s+0\s+never\s+-", by_id[idle.id])

    code, out, err = listing
    assert code == 0, err
    entries = {e["workspace_id"]: e for e in json.loads(out)}
    assert set(entries) == {busy.id, idle.id}
    assert entries[busy.id]["workflow_id"] == f"connect-{busy.id}"
    assert entries[busy.id]["error"] is None
    assert entries[busy.id]["status"]["counters"]["replied"] == 1


async def _delivered(harness: Harness, workspace_id: str) -> bool:
    return (await harness.status(workspace_id)).last_delivery_at is not None


async def test_status_without_id_connector_without_worker_shows_query_error_in_its_row(
    harness: Harness, cli_env: dict[str, str]
) -> None:
    """No worker serves this task queue: the row says so, with what to start, instead of failing the listing."""
    orphan = await harness.workspace("orphan")
    unserved = new_task_queue()
    await start_connector(harness.client, harness.input(orphan), task_queue=unserved)

    code, out, err = await cli(cli_env, "status", "--task-queue", unserved)
    assert code == 0, err
    header, row = out.splitlines()
    advice = f"no worker polls its task queue: start `molecule-connect worker --task-queue {unserved}`"
    assert re.fullmatch(rf"{orphan.id}\s+no worker\s+-\s+-\s+-\s+-\s+{re.escape(advice)}", row)

    code, out, err = await cli(cli_env, "status", "--task-queue", unserved, "--json")
    assert code == 0, err
    [entry] = json.loads(out)
    assert entry["status"] is None
    assert (entry["error"], entry["no_worker"]) == (advice, True)

    code, out, err = await cli(cli_env, "status", "--task-queue", new_task_queue())
    assert (code, out) == (0, "")
    assert err.strip() == "no running connectors"
