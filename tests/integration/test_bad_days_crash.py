"""A worker process SIGKILLed after the platform stored a canvas reply (notify) but before it answered.

``/notify`` carries no ``messageId`` the platform could deduplicate on, so a connector that re-sends after a crash
would post the reply twice. The platform writes a ``notify`` echo row into our own inbox (docs/protocol.md §3.5):
before re-sending, the connector looks for it. Runs a real ``molecule-connect worker`` process on the session's
Temporal dev server and kills it with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import ResetStickyTaskQueueRequest
from temporalio.testing import WorkflowEnvironment

from activities.messages import BackendSpec
from tests.helpers import Harness, wait_until
from worker.settings import workflow_id

CONSOLE_SCRIPT = Path(sys.executable).with_name("molecule-connect")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes a test starts; whatever still runs at teardown is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _start_worker(
    tmp_path: Path, temporal_env: WorkflowEnvironment, task_queue: str, tokens: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path]:
    """``molecule-connect worker`` as a real process (the code under test: this PYTHONPATH), tokens from a file."""
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps(tokens))
    tokens_file.chmod(0o600)
    log = tmp_path / "worker.log"
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "LANG": "C.UTF-8",
        "HOME": str(tmp_path / "home"),
        "MOLECULE_CONNECT_STATE_DIR": str(tmp_path / "state"),
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "MOLECULE_TOKENS_FILE": str(tokens_file),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "worker", "--task-queue", task_queue],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its backend commands die with it (killpg below)
        )
    return proc, log


def _worker_ready(proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"worker exited with {proc.returncode}: {log.read_text()}")
    return "worker running on task queue" in log.read_text()


def _kill_machine(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and everything it started, as a machine dying would."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", ["exec", "echo"])
async def test_worker_killed_between_notify_stored_and_answered_canvas_reply_sent_once(
    harness: Harness,
    temporal_env: WorkflowEnvironment,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
    backend_name: str,
) -> None:
    """The platform stores the canvas reply and stalls its answer; the worker is SIGKILLed meanwhile and another
    worker takes over: the canvas gets exactly one reply (``exec``: a regular dispatch activity; ``echo``: a local
    activity, re-run with the workflow task)."""
    agent = await harness.workspace("agent")
    assert agent.token is not None
    if backend_name == "exec":
        backend = BackendSpec(name="exec", options={"cmd": f"sh -c {shlex.quote('tr a-z A-Z')}"})
        expected = "HELLO FROM THE CANVAS"
    else:
        backend = BackendSpec(name="echo")
        expected = "echo: hello from the canvas"

    proc, log = _start_worker(tmp_path, temporal_env, harness.task_queue, {agent.id: agent.token})
    processes.append(proc)
    await wait_until(lambda: _worker_ready(proc, log), message="worker process ready")
    await harness.start(agent, backend)
    # The first notify is stored, then its answer is held back 8 s: the worker dies well within that.
    await harness.admin.add_fault(f"/workspaces/{agent.id}/notify", method="POST", latency_s=8, phase="after")
    await harness.admin.send_text(agent.id, "hello from the canvas")
    await wait_until(lambda: harness.notifications(agent.id), message="the notify stored on the platform")
    _kill_machine(proc)
    # As in test_crash: skip the dead worker's 10 s sticky queue timeout (a graceful shutdown would reset it too).
    await harness.client.workflow_service.reset_sticky_task_queue(
        ResetStickyTaskQueueRequest(
            namespace=harness.client.namespace, execution=WorkflowExecution(workflow_id=workflow_id(agent.id))
        )
    )
    async with harness.worker():
        status = await wait_until(
            lambda: _settled(harness, agent.id), timeout=90, interval=0.5, message="the canvas message settled"
        )
        notifies = await harness.notifications(agent.id)

    assert [row["response_body"]["result"] for row in notifies] == [expected], "the canvas reply was sent twice"
    assert status.dead_letters == []


async def _settled(harness: Harness, workspace_id: str) -> Any:
    with contextlib.suppress(Exception):
        status = await harness.status(workspace_id)
        if status.counters["replied"] + status.counters["dead_lettered"] >= 1 and not status.pending:
            return status
    await asyncio.sleep(0)
    return None
