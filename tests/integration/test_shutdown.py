"""Graceful shutdown of a real ``molecule-connect worker`` process (issue 4, item 7).

SIGTERM during a dispatch stops polling and lets the dispatch finish within ``--shutdown-grace``; the process exits
0 and the backend never runs twice. A second signal during the grace exits at once (130); nothing is lost either way,
since an unfinished dispatch times out on its heartbeat and runs again elsewhere.
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
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import ResetStickyTaskQueueRequest
from temporalio.testing import WorkflowEnvironment

from activities.messages import BackendSpec
from tests.helpers import Harness, reply_text, wait_until
from worker.settings import workflow_id

CONSOLE_SCRIPT = Path(sys.executable).with_name("molecule-connect")
GRACE_S = 20


class WorkerProcess:
    """``molecule-connect worker --log-format json`` in its own session, logging to a file."""

    def __init__(self, tmp_path: Path, temporal_env: WorkflowEnvironment, task_queue: str, tokens: dict[str, str]):
        tokens_file = tmp_path / "tokens.json"
        tokens_file.write_text(json.dumps(tokens))
        tokens_file.chmod(0o600)
        self.log = tmp_path / "worker.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "MOLECULE_"))}
        env.update(
            TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
            TEMPORAL_NAMESPACE=temporal_env.client.namespace,
            MOLECULE_TOKENS_FILE=str(tokens_file),
            MOLECULE_CONNECT_STATE_DIR=str(tmp_path / "state"),
            HOME=str(tmp_path),
        )
        argv = [str(CONSOLE_SCRIPT), "worker", "--task-queue", task_queue, "--shutdown-grace", str(GRACE_S)]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [*argv, "--log-format", "json"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def logged(self, text: str) -> bool:
        return text in self.log.read_text(errors="replace")

    async def wait_logged(self, text: str) -> None:
        def seen() -> bool:
            assert self.process.poll() is None, f"worker exited early: {self.log.read_text(errors='replace')}"
            return self.logged(text)

        await wait_until(seen, timeout=30, message=f"worker log line {text!r}")

    async def wait_exit(self, timeout: float) -> tuple[int, float]:
        """The exit code and seconds it took from now."""
        started = time.monotonic()
        code = await asyncio.to_thread(self.process.wait, timeout)
        return code, time.monotonic() - started

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture
def cleanup() -> Iterator[list[int]]:
    """Process groups to SIGKILL at teardown: worker processes and backend commands (each leads its own group)."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def backend_recording_runs(marker: Path, sleep_s: int) -> BackendSpec:
    """An exec backend that appends its process group to ``marker``, sleeps, then upper-cases the message."""
    script = f'echo "$$" >> {shlex.quote(str(marker))}; sleep {sleep_s}; tr a-z A-Z'
    return BackendSpec(name="exec", options={"cmd": f"sh -c {shlex.quote(script)}"})


def runs(marker: Path) -> list[int]:
    return [int(line) for line in marker.read_text().split()] if marker.exists() else []


async def test_worker_sigterm_during_dispatch_finishes_it_exits_0_and_replies_once(
    harness: Harness, temporal_env: WorkflowEnvironment, tmp_path: Path, cleanup: list[int]
) -> None:
    """The dispatch started before SIGTERM completes within the grace; the next worker only sends its reply."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    assert agent.token is not None
    marker = tmp_path / "runs"
    worker = WorkerProcess(tmp_path, temporal_env, harness.task_queue, {agent.id: agent.token})
    cleanup.append(worker.process.pid)
    await worker.wait_logged("worker running on task queue")
    await harness.start(agent, backend_recording_runs(marker, sleep_s=3))

    await harness.admin.send_text(agent.id, "graceful", sender=peer, context_id="c1", message_id="m-term")
    cleanup.extend(await wait_until(lambda: runs(marker), message="backend running"))
    worker.process.send_signal(signal.SIGTERM)
    code, took = await worker.wait_exit(timeout=GRACE_S + 20)

    assert code == 0, worker.log.read_text()
    print(f"exited {took:.1f}s after SIGTERM (grace {GRACE_S}s)")
    assert worker.logged("worker stopped")
    # The dispatch completed while the worker no longer polled: its workflow task waits on the stopped worker's sticky
    # queue for the SDK's 10 s sticky timeout. Resetting it only shortens the test.
    await harness.client.workflow_service.reset_sticky_task_queue(
        ResetStickyTaskQueueRequest(
            namespace=harness.client.namespace, execution=WorkflowExecution(workflow_id=workflow_id(agent.id))
        )
    )
    async with harness.worker():  # the dispatch result is in history; this worker sends the reply
        replies = await wait_until(lambda: harness.replies_to(peer.id, agent.id), message="the reply")
        await wait_until(lambda: _settled(harness, agent.id), message="message settled")
    assert [reply_text(r) for r in await harness.replies_to(peer.id, agent.id)] == ["GRACEFUL"]
    assert len(replies) == 1
    assert len(runs(marker)) == 1, "the backend ran again: the dispatch did not finish within the grace"

    # --log-format json: every line is one JSON object, workflow and activity lines carry their context.
    records = worker.records()
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    ours = [r for r in records if r.get("workspace_id") == agent.id]
    assert any("temporal_workflow" in r for r in ours), records


async def _settled(harness: Harness, workspace_id: str) -> bool:
    status = await harness.status(workspace_id)
    return status.pending == 0 and status.counters.get("replied") == 1


async def test_worker_second_sigterm_during_grace_exits_at_once(
    harness: Harness, temporal_env: WorkflowEnvironment, tmp_path: Path, cleanup: list[int]
) -> None:
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    assert agent.token is not None
    marker = tmp_path / "runs"
    worker = WorkerProcess(tmp_path, temporal_env, harness.task_queue, {agent.id: agent.token})
    cleanup.append(worker.process.pid)
    await worker.wait_logged("worker running on task queue")
    await harness.start(agent, backend_recording_runs(marker, sleep_s=GRACE_S * 2))
    await harness.admin.send_text(agent.id, "stuck", sender=peer, context_id="c1", message_id="m-stuck")
    cleanup.extend(await wait_until(lambda: runs(marker), message="backend running"))

    worker.process.send_signal(signal.SIGTERM)
    await worker.wait_logged("signal again to exit now")
    worker.process.send_signal(signal.SIGTERM)
    code, took = await worker.wait_exit(timeout=GRACE_S)

    assert code == 130, worker.log.read_text()
    print(f"exited {took:.1f}s after the second SIGTERM")
    assert worker.logged("second signal: exiting now")
