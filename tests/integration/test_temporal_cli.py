"""Operating connectors from outside Python: the ``temporal`` CLI with plain JSON, and ``molecule-connect run``.

Subprocesses run in threads (``asyncio.to_thread``) so the event loop, and any in-process worker, keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from devplatform.client import text_message
from tests.helpers import Harness, reply_message, reply_text, wait_until
from worker.control import ConnectorError
from worker.settings import workflow_id

BIN = Path(sys.executable).parent
TEMPORAL = BIN / "temporal"
CONSOLE_SCRIPT = BIN / "molecule-connect"


def _address(temporal_env: WorkflowEnvironment) -> str:
    return temporal_env.client.service_client.config.target_host


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No inherited Temporal or Molecule settings; HOME and the state directory are temp dirs.

    PYTHONPATH is kept, so the console script imports the code under test (a worktree), not the installed copy.
    """
    return {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "LANG": "C.UTF-8",
        "HOME": str(tmp_path / "home"),
        "MOLECULE_CONNECT_STATE_DIR": str(tmp_path / "state"),
        **extra,
    }


async def _temporal(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [str(TEMPORAL), *args], env=_clean_env(tmp_path), capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; whatever still runs at teardown is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def test_temporal_workflow_start_plain_json_connects_workspace(
    harness: Harness, temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """``ConnectInput`` as typed at the temporal CLI starts a connector; its ``status`` query answers in JSON."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    address = _address(temporal_env)
    input = {"workspace_id": agent.id, "platform_url": harness.platform.url, "settings": {"poll_interval_s": 0.2}}
    async with harness.worker():
        started = await _temporal(
            tmp_path, "workflow", "start", "--type", "ConnectWorkflow", "--task-queue", harness.task_queue,
            "--workflow-id", workflow_id(agent.id), "--input", json.dumps(input), "--address", address,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr

        async def queried_status() -> dict[str, Any] | None:
            query = await _temporal(
                tmp_path, "workflow", "query", "--workflow-id", workflow_id(agent.id), "--type", "status",
                "--address", address,
            )  # fmt: skip
            assert query.returncode == 0, query.stderr
            # "Query result:\n  QueryResult  {...}": the status as one JSON object.
            status = json.loads(query.stdout[query.stdout.index("{") :])
            return status if status["phase"] == "connected" and status["seeded"] else None

        status = await wait_until(queried_status, message="connected and seeded, per temporal workflow query")
        await harness.admin.send_text(agent.id, "ping", sender=peer, message_id="m-cli")
        replies = await wait_until(lambda: harness.replies_to(peer.id, agent.id), message="reply in peer inbox")
    assert status["workspace_id"] == agent.id
    assert status["settings"]["poll_interval_s"] == 0.2
    assert reply_text(replies[0]) == "echo: ping"
    assert reply_message(replies[0])["metadata"]["in_reply_to"] == "m-cli"


async def _connected_and_seeded(harness: Harness, workspace_id: str) -> bool:
    try:
        status = await harness.status(workspace_id)
    except ConnectorError:
        return False
    return status.phase == "connected" and status.seeded


async def test_run_command_new_user_flow_replies_and_exits_0_on_sigint(
    harness: Harness, temporal_env: WorkflowEnvironment, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """The README flow: ``molecule-connect run`` with exec; a peer's JSON-RPC message/send gets an upper-cased reply."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    assert agent.token is not None and peer.token is not None
    env = _clean_env(tmp_path, TEMPORAL_ADDRESS=_address(temporal_env), MOLECULE_WORKSPACE_TOKEN=agent.token)
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(CONSOLE_SCRIPT), "run", agent.id, "--platform-url", harness.platform.url, "--backend", "exec",
                "-o", "cmd=tr a-z A-Z", "--task-queue", harness.task_queue,
            ],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    processes.append(proc)

    def alive() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"molecule-connect run exited with {proc.returncode}: {log.read_text()}")
        return True

    await wait_until(lambda: alive() and _connected_and_seeded(harness, agent.id), message="connector seeded")
    message_id = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=harness.platform.url, timeout=10) as http:
        response = await http.post(
            f"/workspaces/{agent.id}/a2a",
            json=text_message("hello from a new user", message_id=message_id),
            headers={
                "Authorization": f"Bearer {peer.token}",
                "X-Workspace-ID": peer.id,
                "Origin": harness.platform.url,
            },
        )
    assert response.status_code == 200, response.text
    replies = await wait_until(lambda: alive() and harness.replies_to(peer.id, agent.id), message="reply in peer inbox")
    assert reply_text(replies[0]) == "HELLO FROM A NEW USER"
    assert reply_message(replies[0])["metadata"]["in_reply_to"] == message_id

    proc.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        await asyncio.to_thread(proc.wait, 30)
    assert proc.returncode == 0, log.read_text()
