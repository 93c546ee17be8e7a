"""End to end, durability: ConnectWorkflow keeps its promise (every message answered exactly once, docs/protocol.md §8)
through a Temporal server SIGKILL and restart, continue-as-new forced every few dozen events, and a small soak with
platform faults, a pruned inbox and a worker SIGKILL.

Each test runs its OWN ``temporal server start-dev`` (a SQLite file in the test's tmp dir) instead of the session
server, since it kills it or needs dynamic config. Every process started here is killed in teardown.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.messages import BackendSpec
from devplatform.client import AsyncPlatformAdmin, CreatedWorkspace
from devplatform.server import RunningPlatform
from tests.helpers import Harness, new_task_queue, reply_message, wait_until
from worker.devserver import find_temporal_binary
from worker.settings import SEARCH_ATTRIBUTE_PHASE, SEARCH_ATTRIBUTE_WORKSPACE_ID
from workflows.messages import StatusResult

pytestmark = pytest.mark.slow

CONSOLE_SCRIPT = Path(sys.executable).with_name("molecule-connect")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop_process(process: subprocess.Popen[bytes], *, grace_s: float = 5.0) -> None:
    """SIGTERM the process group (each of ours leads one), then SIGKILL it if it lingers; reap it."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _kill_process(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group: no shutdown code runs, as in a crash or OOM kill."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


class DevServer:
    """A ``temporal server start-dev`` of our own: fixed port and SQLite file, so it can be SIGKILLed and restarted
    with its state. Search attributes are registered when the database is created (first start)."""

    def __init__(self, workdir: Path, dynamic_config: dict[str, Any] | None = None) -> None:
        self.port = _free_port()
        self.db_path = workdir / "t.db"
        self.log_path = workdir / "temporal.log"
        self.dynamic_config = dynamic_config or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [
            str(find_temporal_binary()),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db-filename",
            str(self.db_path),
            "--log-level",
            "error",
        ]
        for key in (SEARCH_ATTRIBUTE_WORKSPACE_ID, SEARCH_ATTRIBUTE_PHASE):
            args += ["--search-attribute", f"{key.name}=Keyword"]
        for name, value in self.dynamic_config.items():
            args += ["--dynamic-config-value", f"{name}={json.dumps(value)}"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def connect(self, timeout: float = 30.0) -> Client:
        """A client (pydantic data converter) once the server answers for the ``default`` namespace."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None and self.process.poll() is None, self._log_tail()
            try:
                client = await Client.connect(self.address, data_converter=pydantic_data_converter)
                await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
                return client
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def wait_serving(self, client: Client, timeout: float = 30.0) -> None:
        """Wait until an existing client reaches the (restarted) server again."""
        request = DescribeNamespaceRequest(namespace="default")
        await wait_until(
            lambda: _succeeds(client.workflow_service.describe_namespace(request)),
            timeout=timeout,
            interval=0.2,
            message=f"Temporal at {self.address} serving again",
        )

    def kill(self) -> None:
        assert self.process is not None
        _kill_process(self.process)

    def stop(self) -> None:
        if self.process is not None:
            _stop_process(self.process, grace_s=10.0)

    def _log_tail(self) -> str:
        try:
            return "temporal server exited: " + self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "temporal server exited"


async def _succeeds(call: Awaitable[Any]) -> bool:
    try:
        await call
    except Exception:
        return False
    return True


class WorkerProcess:
    """``molecule-connect worker`` as a child process (its own process group), so a test can SIGKILL it."""

    def __init__(self, workdir: Path, server: DevServer, task_queue: str, tokens_file: Path, name: str) -> None:
        self.log_path = workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "MOLECULE_"))}
        env.update(
            TEMPORAL_ADDRESS=server.address,
            TEMPORAL_NAMESPACE="default",
            MOLECULE_TOKENS_FILE=str(tokens_file),
            MOLECULE_CONNECT_STATE_DIR=str(workdir / "state"),
        )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(CONSOLE_SCRIPT), "worker", "--task-queue", task_queue],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    async def wait_running(self, timeout: float = 30.0) -> None:
        def running() -> bool:
            assert self.process.poll() is None, f"worker exited: {self.log_path.read_text(errors='replace')}"
            return "worker running on task queue" in self.log_path.read_text(errors="replace")

        await wait_until(running, timeout=timeout, message="worker process up")

    def kill(self) -> None:
        _kill_process(self.process)

    def stop(self) -> None:
        _stop_process(self.process, grace_s=35.0)  # graceful shutdown lets in-flight activities finish (≤ 30 s)


@pytest_asyncio.fixture
async def processes() -> AsyncIterator[list[DevServer | WorkerProcess]]:
    """Register every server and worker process a test starts here: all are stopped in teardown, workers first."""
    started: list[DevServer | WorkerProcess] = []
    try:
        yield started
    finally:
        for item in sorted(started, key=lambda p: isinstance(p, DevServer)):
            with contextlib.suppress(Exception):
                item.stop()


async def _start_server(
    processes: list[DevServer | WorkerProcess], tmp_path: Path, dynamic_config: dict[str, Any] | None = None
) -> tuple[DevServer, Client]:
    server = DevServer(tmp_path, dynamic_config)
    processes.append(server)
    server.start()
    return server, await server.connect()


def _in_reply_to(row: dict[str, Any]) -> str:
    return reply_message(row)["metadata"]["in_reply_to"]


async def _reply_counts(harness: Harness, peer: CreatedWorkspace, agent: CreatedWorkspace) -> collections.Counter[str]:
    """How many reply rows the agent stored in the peer's inbox, by the messageId they answer."""
    return collections.Counter(_in_reply_to(r) for r in await harness.replies_to(peer.id, agent.id))


async def _all_answered(
    harness: Harness, peer: CreatedWorkspace, agent: CreatedWorkspace, message_ids: list[str]
) -> collections.Counter[str] | None:
    counts = await _reply_counts(harness, peer, agent)
    return counts if set(message_ids) <= set(counts) else None


def _assert_exactly_once(counts: collections.Counter[str], message_ids: list[str]) -> None:
    assert sorted(counts) == sorted(message_ids), "replies to unknown messages, or messages without a reply"
    twice = {m: n for m, n in counts.items() if n != 1}
    assert not twice, f"messages answered more than once: {twice}"


async def _until(predicate: Callable[[], Awaitable[Any]], **kwargs: Any) -> Any:
    """``wait_until``, treating an exception (a query while Temporal is restarting) as "not yet"."""

    async def attempt() -> Any:
        try:
            return await predicate()
        except Exception:
            return None

    return await wait_until(attempt, **kwargs)


async def _settled(harness: Harness, agent: CreatedWorkspace, replied: int) -> StatusResult:
    """The connector's status once it has recorded ``replied`` replies and holds nothing pending: a reply row can
    reach the platform a moment before its activity completes in the workflow."""

    async def check() -> StatusResult | None:
        status = await harness.status(agent.id)
        return status if status.counters["replied"] >= replied and not status.pending else None

    return await _until(check, timeout=60, message=f"{agent.id} settled {replied} replies")


# --- 6. Temporal server crash -----------------------------------------------------------------------------------


async def test_temporal_server_sigkilled_mid_stream_restarted_every_message_replied_once(
    platform: RunningPlatform, admin: AsyncPlatformAdmin, processes: list[DevServer | WorkerProcess], tmp_path: Path
) -> None:
    """The Temporal server is SIGKILLed after about three of ten replies and restarted on the same port and
    database; the worker keeps running and reconnects, and every message still gets exactly one reply."""
    server, client = await _start_server(processes, tmp_path)
    harness = Harness(client=client, task_queue=new_task_queue(), platform=platform, admin=admin)
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    backend = BackendSpec(name="exec", options={"cmd": "sh -c 'sleep 0.3; cat'"})
    ids = [f"m-{n}" for n in range(10)]
    async with harness.worker():
        await harness.start(agent, backend)
        for n, message_id in enumerate(ids):
            await harness.admin.send_text(
                agent.id, f"msg {n}", sender=peer, context_id=f"c{n % 2}", message_id=message_id
            )
        await wait_until(
            lambda: _count_at_least(harness, peer, agent, 3), timeout=30, interval=0.05, message="3 replies"
        )
        server.kill()
        answered_at_kill = sum((await _reply_counts(harness, peer, agent)).values())
        server.start()
        await server.wait_serving(client)
        counts = await wait_until(
            lambda: _all_answered(harness, peer, agent, ids), timeout=90, message="all 10 replies after restart"
        )
        status = await _settled(harness, agent, len(ids))

    assert answered_at_kill < len(ids), "the stream was over before the server was killed"
    _assert_exactly_once(counts, ids)
    assert status.counters["replied"] == len(ids)
    assert status.counters["dead_lettered"] == 0


async def _count_at_least(harness: Harness, peer: CreatedWorkspace, agent: CreatedWorkspace, n: int) -> bool:
    return sum((await _reply_counts(harness, peer, agent)).values()) >= n


# --- 7. continue-as-new -----------------------------------------------------------------------------------------

CONTINUE_AS_NEW_EVERY = {"limit.historyCount.suggestContinueAsNew": 60}
"""The server suggests continue-as-new once a run has 60 events (default 4 Ki): a handful of messages per run."""


async def test_continue_as_new_forced_often_nothing_lost_nothing_dispatched_twice(
    platform: RunningPlatform, admin: AsyncPlatformAdmin, processes: list[DevServer | WorkerProcess], tmp_path: Path
) -> None:
    """With continue-as-new suggested every 60 events, 30 messages in 3 conversations arriving while the connector
    runs cross several runs: each is dispatched once (the backend logs it) and replied once."""
    server, client = await _start_server(processes, tmp_path, CONTINUE_AS_NEW_EVERY)
    harness = Harness(client=client, task_queue=new_task_queue(), platform=platform, admin=admin)
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    log = tmp_path / "dispatched.log"
    cmd = f"""sh -c 'x=$(cat); printf "%s\\n" "$x" >> "{log}"; printf "%s" "$x"'"""
    backend = BackendSpec(name="exec", options={"cmd": cmd})
    ids = [f"m-{n}" for n in range(30)]
    async with harness.worker():
        handle = await harness.start(agent, backend)
        for n, message_id in enumerate(ids):
            await harness.admin.send_text(
                agent.id, f"message {n}", sender=peer, context_id=f"c{n % 3}", message_id=message_id
            )
            await asyncio.sleep(0.05)  # arriving while the connector runs, not as one batch
        counts = await wait_until(lambda: _all_answered(harness, peer, agent, ids), timeout=60, message="30 replies")
        status = await _settled(harness, agent, len(ids))
        description = await handle.describe()

    _assert_exactly_once(counts, ids)
    dispatched = collections.Counter(log.read_text().splitlines())
    assert dispatched == collections.Counter(f"message {n}" for n in range(30)), "a message was dispatched twice"
    assert status.counters["continued_as_new"] >= 1
    assert description.run_id != handle.first_execution_run_id
    assert status.counters["replied"] == len(ids)
    assert status.counters["duplicates"] == 0


# --- 8. soak ----------------------------------------------------------------------------------------------------

SOAK_WORKSPACES = int(os.environ.get("SOAK_WORKSPACES", "3"))
SOAK_MESSAGES = int(os.environ.get("SOAK_MESSAGES", "20"))
SOAK_CONTEXTS = 3
SOAK_TIMEOUT_S = 150 + SOAK_WORKSPACES * SOAK_MESSAGES // 4


@pytest.mark.timeout(SOAK_TIMEOUT_S + 60)
async def test_soak_faults_prune_and_worker_sigkill_every_message_replied_once(
    platform: RunningPlatform, admin: AsyncPlatformAdmin, processes: list[DevServer | WorkerProcess], tmp_path: Path
) -> None:
    """Soak, CI size: SOAK_WORKSPACES workspaces (default 3) x SOAK_MESSAGES messages each (default 20), in three
    conversations per workspace, served by a ``molecule-connect worker`` child process. While messages arrive:
    503 bursts on an inbox read and on replies, a 1 s latency fault, a prune of one workspace's inbox (its next
    poll gets a 410) and a SIGKILL of the worker, replaced by a new one. On the platform side, every messageId gets
    exactly one reply.

    The issue's full size is 10 x 100: ``SOAK_WORKSPACES=10 SOAK_MESSAGES=100 pytest -k soak`` (timeouts scale).
    """
    rng = random.Random(os.environ.get("SOAK_SEED", "soak"))
    server, client = await _start_server(processes, tmp_path)
    task_queue = new_task_queue()
    harness = Harness(client=client, task_queue=task_queue, platform=platform, admin=admin)
    agents = [await harness.workspace(f"agent-{i}") for i in range(SOAK_WORKSPACES)]
    peer = await harness.workspace("peer")
    tokens_file = tmp_path / "tokens.json"
    tokens_file.touch(mode=0o600)
    tokens_file.write_text(json.dumps(dict(harness.tokens)))
    os.chmod(tokens_file, 0o600)

    def new_worker(name: str) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, server, task_queue, tokens_file, name)
        processes.append(worker)
        return worker

    worker = new_worker("worker-1")
    await worker.wait_running()
    backend = BackendSpec(name="exec", options={"cmd": "sh -c 'sleep 0.1; cat'"})
    for agent in agents:
        await harness.start(agent, backend)

    sent: dict[str, list[str]] = {agent.id: [] for agent in agents}
    pruned, latency_target = agents[1 % len(agents)], agents[-1]
    schedule = [(i, n) for n in range(SOAK_MESSAGES) for i in range(len(agents))]
    total = len(schedule)

    async def send(index: int) -> None:
        i, n = schedule[index]
        message_id = f"a{i}-m{n}"
        await admin.send_text(
            agents[i].id,
            f"agent {i} message {n}",
            sender=peer,
            context_id=f"a{i}-c{rng.randrange(SOAK_CONTEXTS)}",
            message_id=message_id,
        )
        sent[agents[i].id].append(message_id)

    async def answered(agent: CreatedWorkspace) -> bool:
        return await _all_answered(harness, peer, agent, sent[agent.id]) is not None

    for index in range(total):
        if index == total // 10:
            await admin.add_fault(f"/workspaces/{agents[0].id}/activity", status=503, count=3, method="GET")
            await admin.add_fault(f"/workspaces/{peer.id}/a2a", status=503, count=3, method="POST")
        if index == int(total * 0.3):
            # Retention catches up with a settled inbox: the cursor row is gone and the next poll answers 410.
            await wait_until(lambda: answered(pruned), timeout=60, message="pruned workspace caught up")
            assert await admin.prune(workspace_id=pruned.id) > 0
        if index == int(total * 0.4):
            await admin.add_fault(f"/workspaces/{latency_target.id}/activity", latency_s=1.0, count=1, method="GET")
        if index == int(total * 0.6):
            worker.kill()
            worker = new_worker("worker-2")
            await worker.wait_running()
        await send(index)
        await asyncio.sleep(rng.uniform(0.0, 0.05))

    for agent in agents:
        counts = await wait_until(
            lambda agent=agent: _all_answered(harness, peer, agent, sent[agent.id]),
            timeout=SOAK_TIMEOUT_S,
            message=f"every message to {agent.id} answered",
        )
        _assert_exactly_once(counts, sent[agent.id])
    statuses = {agent.id: await _settled(harness, agent, len(sent[agent.id])) for agent in agents}

    assert sum(len(ids) for ids in sent.values()) == total
    assert statuses[pruned.id].counters["cursor_resets"] >= 1
    for agent in agents:
        assert statuses[agent.id].counters["dead_lettered"] == 0, statuses[agent.id].dead_letters
        assert statuses[agent.id].counters["replied"] == len(sent[agent.id])
    assert await admin.faults() == []
