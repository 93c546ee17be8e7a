"""Many connectors on one Temporal, through the real ``molecule-connect`` console script.

- ``run WS`` serves its own task queue (``molecule-connect.<WS>``) with its own token: two ``run``s never take each
  other's activities, so no request carries the other workspace's token.
- ``start``/``run`` on a running connector: the same definition is reused, explicit settings are applied with
  ``configure``, a different backend, platform URL or task queue is refused naming the difference; ``--replace``
  drains and starts the new definition with the old cursor (no redelivery, no loss); a ``run`` without
  ``--task-queue`` serves a connector where it already runs.
- Every control exits 1 within its ``--timeout`` when no worker polls the connector's task queue, with one line
  naming the workflow, its task queue and the worker to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from activities.messages import BackendSpec
from devplatform.client import CreatedWorkspace
from tests.helpers import Harness, new_task_queue, reply_message, reply_text, wait_until
from worker.control import ConnectorError, start_connector
from worker.settings import run_task_queue, workflow_id

CLI = Path(sys.executable).with_name("molecule-connect")


@dataclass(frozen=True)
class CliRun:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return self.stderr.strip().splitlines()


@pytest.fixture
def cli_env(temporal_env: WorkflowEnvironment, tmp_path: Path) -> dict[str, str]:
    """A ``molecule-connect`` process's environment: the test server, no user state, the code under test."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "MOLECULE_"))}
    env.update(
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        TEMPORAL_NAMESPACE=temporal_env.client.namespace,
        MOLECULE_CONNECT_STATE_DIR=str(tmp_path / "state"),
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
    )
    return env


async def cli(env: dict[str, str], *args: str, timeout: float = 60) -> CliRun:
    """Run one command to completion; ``timeout`` is a generous bound against a hang, not a timing assertion."""
    process = await asyncio.create_subprocess_exec(
        str(CLI), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"molecule-connect {' '.join(args)} did not exit within {timeout}s") from None
    assert process.returncode is not None
    return CliRun(process.returncode, stdout.decode(), stderr.decode())


class RunProcess:
    """A long-running ``molecule-connect run ...`` logging to a file."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process, self.log = process, log

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_logged(self, needle: str) -> str:
        """The first log line containing ``needle``, once it is there; fails if the process exited."""

        def line() -> str | None:
            text = self.text()
            if self.process.returncode is not None and needle not in text:
                raise AssertionError(f"run exited with {self.process.returncode}: {text}")
            return next((ln for ln in text.splitlines() if needle in ln), None)

        return await wait_until(line, timeout=60, message=f"run log line {needle!r}")

    async def stop(self) -> int:
        """SIGINT (Ctrl-C), then the exit code."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
        return await asyncio.wait_for(self.process.wait(), timeout=60)


@pytest_asyncio.fixture
async def runs(cli_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Any]:
    """Start ``molecule-connect run`` processes; whatever still runs at teardown is killed."""
    started: list[RunProcess] = []

    async def start(*args: str, token: str, **env: str) -> RunProcess:
        log = tmp_path / f"run-{len(started)}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                str(CLI), "run", *args, env={**cli_env, "MOLECULE_WORKSPACE_TOKEN": token, **env},
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        run = RunProcess(process, log)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                run.process.kill()
            await run.process.wait()


async def task_queue_of(harness: Harness, workspace_id: str) -> str:
    description = await harness.client.get_workflow_handle(workflow_id(workspace_id)).describe()
    return description.task_queue or ""


async def seeded(harness: Harness, workspace_id: str) -> bool:
    try:
        status = await harness.status(workspace_id)
    except ConnectorError:
        return False
    return status.seeded and status.phase == "connected"


async def answers(harness: Harness, peer: CreatedWorkspace, agent: CreatedWorkspace) -> dict[str, list[str]]:
    """Reply texts from ``agent`` in ``peer``'s inbox, by the message id they answer."""
    found: dict[str, list[str]] = {}
    for row in await harness.replies_to(peer.id, agent.id):
        found.setdefault(reply_message(row)["metadata"]["in_reply_to"], []).append(reply_text(row))
    return found


def assert_one_line(run: CliRun, code: int, *needles: str, logs: bool = False) -> str:
    """Exit ``code`` with one ``molecule-connect: ...`` line holding each needle (after ``run``'s log lines)."""
    assert run.code == code, run
    lines = run.error_lines
    if logs:  # `run` logs at INFO from the start ("connected to Temporal")
        lines = lines[-1:] if sum(ln.startswith("molecule-connect: ") for ln in lines) == 1 else lines
    assert len(lines) == 1, run.stderr
    line = lines[0]
    assert line.startswith("molecule-connect: "), line
    for needle in needles:
        assert needle in line, line
    return line


# --- run: a task queue and a token of its own -----------------------------------------------------------------------


async def test_two_runs_with_their_own_tokens_each_answer_only_their_own_messages(harness: Harness, runs) -> None:
    """Two ``run``s on one Temporal, each with only its workspace's token: every message answered, no auth refusal.

    On one shared task queue each worker would take the other connector's activities and send them with its own
    token (refused ``403``: the connector goes ``blocked``).
    """
    peer = await harness.workspace("peer")
    agents = [await harness.workspace("agent-a"), await harness.workspace("agent-b")]
    processes = []
    for agent, cmd in zip(agents, ("tr a-z A-Z", "rev"), strict=True):
        assert agent.token is not None
        args = (agent.id, "--platform-url", harness.platform.url, "-b", "exec", "-o", f"cmd={cmd}")
        processes.append(await runs(*args, token=agent.token))
    for agent, process in zip(agents, processes, strict=True):
        line = await process.wait_logged("running on task queue")
        assert f"{workflow_id(agent.id)} running on task queue {run_task_queue(agent.id)} (started)" in line
        await wait_until(lambda a=agent: seeded(harness, a.id), timeout=60, message="cold start")
        assert await task_queue_of(harness, agent.id) == run_task_queue(agent.id)

    sent = {agent.id: [f"m-{n}-{i}" for i in range(5)] for n, agent in enumerate(agents)}
    for i in range(5):
        for agent in agents:
            mid = sent[agent.id][i]
            await harness.admin.send_text(agent.id, f"hello {i}", sender=peer, context_id=f"c{i}", message_id=mid)

    async def all_answered() -> bool:
        got = [await answers(harness, peer, agent) for agent in agents]
        return all(set(g) >= set(sent[a.id]) for g, a in zip(got, agents, strict=True))

    await wait_until(all_answered, timeout=90, message="every message answered by its own connector")
    upper, reversed_ = [await answers(harness, peer, agent) for agent in agents]
    assert upper == {mid: [f"HELLO {mid[-1]}"] for mid in sent[agents[0].id]}
    assert reversed_ == {mid: [f"{mid[-1]} olleh"] for mid in sent[agents[1].id]}
    for agent, process in zip(agents, processes, strict=True):
        status = await harness.status(agent.id)
        assert (status.phase, status.blocked_reason, status.last_error) == ("connected", None, None)
        assert status.counters["replied"] == 5
        log = process.text()
        # Whole words: row and workspace ids (UUIDs) in the log may contain "401" or "403", and a log line's time
        # may end in ",403" (milliseconds).
        for refusal in (r"(?<!,)\b403\b", r"(?<!,)\b401\b", "no token for workspace"):
            assert not re.search(refusal, log), log
        assert await process.stop() == 0


async def test_run_without_task_queue_serves_a_connector_where_it_already_runs(harness: Harness, runs) -> None:
    """An upgrade must not strand a connector started on another task queue (e.g. the old shared default)."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    assert agent.token is not None
    old_queue = new_task_queue()
    await start_connector(harness.client, harness.input(agent), task_queue=old_queue)  # no worker serves it yet

    process = await runs(agent.id, "--platform-url", harness.platform.url, token=agent.token)
    line = await process.wait_logged("running on task queue")
    assert f"{workflow_id(agent.id)} running on task queue {old_queue} (already running, same definition)" in line
    assert f"to move it: --task-queue {run_task_queue(agent.id)} --replace" in line
    assert run_task_queue(agent.id) not in line.split("to move it")[0]  # never names a queue it is not on
    await wait_until(lambda: seeded(harness, agent.id), timeout=60, message="served on its old task queue")
    await harness.admin.send_text(agent.id, "still there?", sender=peer, message_id="m-1")
    await wait_until(lambda: harness.replies_to(peer.id, agent.id), timeout=60, message="the reply")
    assert await task_queue_of(harness, agent.id) == old_queue
    assert await process.stop() == 0

    # The advice works: the old queue is served until the connector drained, then it runs on its own queue.
    own = run_task_queue(agent.id)
    moved = await runs(agent.id, "--platform-url", harness.platform.url, "--task-queue", own, "--replace",
                       token=agent.token)  # fmt: skip
    line = await moved.wait_logged("running on task queue")
    assert f"running on task queue {own} (replaced: drained, then started with its cursor; " in line
    assert f"task_queue {old_queue} → {own}" in line
    await harness.admin.send_text(agent.id, "moved?", sender=peer, message_id="m-2")
    await wait_until(lambda: _has(answers(harness, peer, agent), {"m-1", "m-2"}), timeout=60, message="m-2 answered")
    assert await task_queue_of(harness, agent.id) == own
    assert {mid: len(texts) for mid, texts in (await answers(harness, peer, agent)).items()} == {"m-1": 1, "m-2": 1}
    assert await moved.stop() == 0


# --- honest start -----------------------------------------------------------------------------------------------------


async def test_start_and_run_reuse_same_definition_configure_settings_and_refuse_other_definitions(
    harness: Harness, cli_env: dict[str, str]
) -> None:
    agent = await harness.workspace("agent")
    assert agent.token is not None
    ws, url, queue = agent.id, harness.platform.url, harness.task_queue
    start = ("start", ws, "--platform-url", url, "--task-queue", queue)
    async with harness.worker():
        first = await cli(cli_env, *start)
        assert (first.code, first.stdout) == (0, f"{workflow_id(ws)}\n"), first
        assert f"{workflow_id(ws)} running on task queue {queue} (started)" in first.stderr
        await wait_until(lambda: seeded(harness, ws), message="cold start")

        again = await cli(cli_env, *start)
        assert again.code == 0, again
        assert f"running on task queue {queue} (already running, same definition)" in again.stderr

        configured = await cli(cli_env, *start, "--start-from", "backlog")
        assert configured.code == 0, configured
        assert "settings applied with configure: start_from=backlog" in configured.stderr
        assert (await harness.status(ws)).settings.start_from == "backlog"

        run_env = {**cli_env, "MOLECULE_WORKSPACE_TOKEN": agent.token}
        refusals = await asyncio.gather(
            cli(cli_env, *start, "-b", "exec", "-o", "cmd=rev"),
            cli(cli_env, "start", ws, "--platform-url", url, "--task-queue", "elsewhere"),
            cli(cli_env, "start", ws, "--platform-url", "http://127.0.0.1:9", "--task-queue", queue),
            cli(run_env, "run", ws, "--platform-url", url, "--no-probe", "-b", "exec", "-o", "cmd=rev"),
            cli(run_env, "run", ws, "--platform-url", url, "--no-probe", "--task-queue", "elsewhere"),
        )
        for n, (refused, difference) in enumerate(
            zip(
                refusals,
                [
                    "backend echo → exec(cmd='rev')",
                    f"task_queue {queue} → elsewhere",
                    f"platform_url {url} → http://127.0.0.1:9",
                    "backend echo → exec(cmd='rev')",
                    f"task_queue {queue} → elsewhere",
                ],
                strict=True,
            )
        ):
            head = f"{workflow_id(ws)} already runs with another definition"
            line = assert_one_line(refused, 2, head, difference, logs=n >= 3)
            assert f"`molecule-connect drain {ws}`" in line and "--replace" in line
        status = await harness.status(ws)
    assert (status.backend, status.platform_url, status.phase) == ("echo", url, "connected")
    assert await task_queue_of(harness, ws) == queue


async def test_run_replace_drains_and_starts_new_backend_with_the_cursor_no_redelivery_no_loss(
    harness: Harness, runs
) -> None:
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    assert agent.token is not None
    base = (agent.id, "--platform-url", harness.platform.url)
    old = await runs(*base, token=agent.token)
    await old.wait_logged("running on task queue")
    await wait_until(lambda: seeded(harness, agent.id), timeout=60, message="cold start")
    await harness.admin.send_text(agent.id, "one", sender=peer, message_id="m-1")
    await wait_until(lambda: answers(harness, peer, agent), timeout=60, message="m-1 answered by echo")
    assert await old.stop() == 0
    # Arrives while no worker runs: the old connector has not fetched it; it must be answered exactly once.
    await harness.admin.send_text(agent.id, "two", sender=peer, message_id="m-2")

    new = await runs(*base, "-b", "exec", "-o", "cmd=tr a-z A-Z", "--replace", token=agent.token)
    line = await new.wait_logged("running on task queue")
    assert f"{workflow_id(agent.id)} running on task queue {run_task_queue(agent.id)} (replaced: drained" in line
    assert "backend echo → exec(cmd='tr a-z A-Z')" in line
    await harness.admin.send_text(agent.id, "three", sender=peer, message_id="m-3")
    await wait_until(
        lambda: _has(answers(harness, peer, agent), {"m-1", "m-2", "m-3"}), timeout=60, message="all answered"
    )
    got = await answers(harness, peer, agent)
    assert sorted(got) == ["m-1", "m-2", "m-3"]
    assert all(len(texts) == 1 for texts in got.values()), got  # nothing redelivered
    assert got["m-3"] == ["THREE"]
    status = await harness.status(agent.id)
    assert status.backend == "exec"
    assert status.counters["replied"] == 3  # the counters came along with the cursor
    assert await new.stop() == 0


async def _has(found: Any, message_ids: set[str]) -> bool:
    return set(await found) >= message_ids


# --- controls never hang -----------------------------------------------------------------------------------------


async def test_every_control_with_no_worker_exits_1_naming_workflow_and_task_queue(
    harness: Harness, cli_env: dict[str, str], tmp_path: Path
) -> None:
    agent = await harness.workspace("agent")
    unserved = new_task_queue()
    await start_connector(harness.client, harness.input(agent), task_queue=unserved)
    ws = agent.id
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[defaults]\nplatform_url = "{harness.platform.url}"\n\n[[workspace]]\nid = "{ws}"\n')
    expected = (
        f"{workflow_id(ws)} on task queue {unserved}: no worker is polling it: "
        f"start `molecule-connect worker --task-queue {unserved}`"
    )
    controls = [
        ("status", ws),
        ("status", ws, "--json"),
        ("pause", ws),
        ("resume", ws),
        ("drain", ws),
        ("cursor", ws, "--latest"),
        ("dead-letters", ws),
        ("dead-letters", ws, "--all"),
        ("dead-letters", ws, "--discard", "00000000-0000-0000-0000-000000000000"),
        ("configure", ws, "max_concurrency=2"),
    ]
    done = await asyncio.gather(*(cli(cli_env, *args, "--timeout", "2") for args in controls))
    for args, run in zip(controls, done, strict=True):
        assert run.stdout == "", (args, run)
        assert assert_one_line(run, 1) == f"molecule-connect: {expected}", args

    applied = await cli(cli_env, "fleet", "apply", str(fleet), "--task-queue", unserved, "--timeout", "2")
    assert applied.code == 1, applied
    assert applied.stdout.splitlines() == [f"{ws}: error: {expected}"]
    table = await cli(cli_env, "fleet", "status", str(fleet), "--timeout", "2")
    assert table.code == 0, table
    assert table.stdout.splitlines()[1].split()[:3] == [ws, "no", "worker"]
    assert (await harness.client.get_workflow_handle(workflow_id(ws)).describe()).status is not None


async def test_control_answered_too_slowly_exits_1_saying_a_worker_polls(
    harness: Harness, cli_env: dict[str, str]
) -> None:
    """A worker polls but the update waits for a slow in-flight dispatch: exit 1 within --timeout, not a hang."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    slow = BackendSpec(name="exec", options={"cmd": "sh -c 'sleep 20; cat'"})
    async with harness.worker():
        await harness.start(agent, slow)
        await harness.admin.send_text(agent.id, "slow", sender=peer, message_id="m-slow")
        await wait_until(lambda: _in_flight(harness, agent.id), message="dispatch in flight")
        paused = await cli(cli_env, "pause", agent.id, "--timeout", "1")
        line = assert_one_line(paused, 1, f"{workflow_id(agent.id)} on task queue {harness.task_queue}")
        assert "no answer within 1s though a worker polled it" in line


async def _in_flight(harness: Harness, workspace_id: str) -> bool:
    return bool((await harness.status(workspace_id)).in_flight)
