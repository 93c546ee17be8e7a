"""``molecule-connect fleet apply|status`` against a real Temporal dev server, a devplatform and a worker.

Apply is idempotent: it starts what is missing (marked with the fleet's name), configures only changed settings,
reports fixed-field changes as a restart, drains unlisted connectors of this fleet with ``--prune`` (never ones
started by hand or by another fleet) and changes nothing with ``--dry-run``. Task queues come from the workspace,
``--task-queue``, ``[defaults]``, in that order.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from devplatform.client import CreatedWorkspace
from tests.helpers import FAST, Harness, new_task_queue
from worker.assemble import running_worker
from worker.settings import workflow_id
from workflows.messages import ConnectResult

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


def fleet_toml(platform_url: str, *workspaces: str, **overrides: dict[str, Any]) -> str:
    """A fleet file: FAST settings in [defaults], one [[workspace]] per id with its ``overrides`` as TOML lines."""
    settings = ", ".join(f"{k} = {v}" for k, v in FAST.items())
    lines = ["[defaults]", f'platform_url = "{platform_url}"', f"settings = {{ {settings} }}", ""]
    for workspace_id in workspaces:
        lines += ["[[workspace]]", f'id = "{workspace_id}"']
        lines += [f"{key} = {value}" for key, value in overrides.get(workspace_id, {}).items()]
        lines.append("")
    return "\n".join(lines)


class Fleet:
    """The fleet file of one test and the ``molecule-connect fleet`` command on the test's task queue."""

    def __init__(self, harness: Harness, env: dict[str, str], path: Path) -> None:
        self.harness, self.env, self.path = harness, env, path

    def write(self, *workspaces: CreatedWorkspace, **overrides: dict[str, Any]) -> None:
        self.path.write_text(fleet_toml(self.harness.platform.url, *(w.id for w in workspaces), **overrides))

    async def run(self, *args: str, expect: int = 0, path: Path | None = None, queue: bool = True) -> list[str]:
        """``fleet <args...> [--task-queue <the test's>]``: its stdout lines, once the exit code is ``expect``."""
        command = [args[0], str(path or self.path), *args[1:]]
        if args[0] == "apply" and queue:
            command += ["--task-queue", self.harness.task_queue]
        process = await asyncio.create_subprocess_exec(
            str(CLI), "fleet", *command, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == expect, (stdout.decode(), stderr.decode())
        return stdout.decode().splitlines()

    async def task_queue_and_fleet(self, workspace: CreatedWorkspace) -> tuple[str | None, object]:
        """Where the connector runs, and the fleet its memo names (None when started by hand)."""
        description = await self.harness.client.get_workflow_handle(workflow_id(workspace.id)).describe()
        return description.task_queue, (await description.memo()).get("fleet")

    async def is_running(self, workspace: CreatedWorkspace) -> bool:
        try:
            description = await self.harness.client.get_workflow_handle(workflow_id(workspace.id)).describe()
        except Exception:
            return False
        return description.status == WorkflowExecutionStatus.RUNNING


@pytest.fixture
def fleet(harness: Harness, cli_env: dict[str, str], tmp_path: Path) -> Fleet:
    return Fleet(harness, cli_env, tmp_path / "fleet.toml")


async def test_fleet_apply_starts_then_is_a_noop_then_configures_only_the_changed_setting(
    harness: Harness, fleet: Fleet
) -> None:
    a, b = await harness.workspace("a"), await harness.workspace("b")
    fleet.write(a, b)
    async with harness.worker():
        assert await fleet.run("apply", "--dry-run") == [f"{a.id}: start", f"{b.id}: start"]
        assert not await fleet.is_running(a) and not await fleet.is_running(b)

        assert await fleet.run("apply") == [f"{a.id}: start", f"{b.id}: start"]
        assert await fleet.is_running(a) and await fleet.is_running(b)
        assert await fleet.run("apply") == [f"{a.id}: unchanged", f"{b.id}: unchanged"]

        fleet.write(a, b, **{b.id: {"settings": "{ max_concurrency = 8 }"}})
        assert await fleet.run("apply", "--dry-run") == [f"{a.id}: unchanged", f"{b.id}: configure max_concurrency=8"]
        assert (await harness.status(b.id)).settings.max_concurrency == 4
        assert await fleet.run("apply") == [f"{a.id}: unchanged", f"{b.id}: configure max_concurrency=8"]
        assert (await harness.status(b.id)).settings.max_concurrency == 8
        assert (await harness.status(b.id)).settings.poll_interval_s == FAST["poll_interval_s"]  # merged, not reset
        assert await fleet.run("apply") == [f"{a.id}: unchanged", f"{b.id}: unchanged"]

        # The backend is fixed for a run: apply reports it and exits 1 rather than pretending it converged.
        fleet.write(a, b, **{a.id: {"backend": '"exec"', "options": "{ cmd = 'cat' }"}})
        lines = await fleet.run("apply", expect=1)
        assert lines[0] == f"{a.id}: restart needed (drain, then apply): backend echo → exec(cmd='cat')"

        table = await fleet.run("status")
    assert table[0].split()[:2] == ["WORKSPACE", "PHASE"]
    assert sorted(line.split()[:2] for line in table[1:]) == sorted([[a.id, "connected"], [b.id, "connected"]])


async def test_fleet_apply_prune_drains_only_unlisted_connector_on_its_task_queue(
    harness: Harness, fleet: Fleet
) -> None:
    a, b = await harness.workspace("a"), await harness.workspace("b")
    fleet.write(a, b)
    async with harness.worker():
        await fleet.run("apply")
        fleet.write(a)
        assert await fleet.run("apply") == [f"{a.id}: unchanged"]  # without --prune, b is left alone
        assert await fleet.run("apply", "--prune", "--dry-run") == [f"{a.id}: unchanged", f"{b.id}: drain (pruned)"]
        assert await fleet.is_running(b)

        assert await fleet.run("apply", "--prune") == [f"{a.id}: unchanged", f"{b.id}: drain (pruned)"]
        result = await asyncio.wait_for(harness.client.get_workflow_handle(workflow_id(b.id)).result(), timeout=30)
        assert ConnectResult.model_validate(result).phase == "stopped"
        assert await fleet.is_running(a)
        assert await fleet.run("apply", "--prune") == [f"{a.id}: unchanged"]


async def test_fleet_apply_prune_leaves_hand_started_and_other_fleets_connectors_alone(
    harness: Harness, fleet: Fleet, cli_env: dict[str, str], tmp_path: Path
) -> None:
    a, b, by_hand, other = [await harness.workspace(n) for n in ("a", "b", "by-hand", "other")]
    fleet.path.write_text('name = "alpha"\n' + fleet_toml(harness.platform.url, a.id, b.id))
    other_fleet = tmp_path / "beta.toml"  # unnamed: its name is the file's stem
    other_fleet.write_text(fleet_toml(harness.platform.url, other.id))
    async with harness.worker():
        assert await fleet.run("apply") == [f"{a.id}: start", f"{b.id}: start"]
        assert await fleet.run("apply", path=other_fleet) == [f"{other.id}: start"]
        started = await asyncio.create_subprocess_exec(
            str(CLI), "start", by_hand.id, "--platform-url", harness.platform.url, "--task-queue", harness.task_queue,
            env=cli_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert await asyncio.wait_for(started.wait(), timeout=30) == 0
        assert await fleet.task_queue_and_fleet(a) == (harness.task_queue, "alpha")
        assert await fleet.task_queue_and_fleet(other) == (harness.task_queue, "beta")
        assert await fleet.task_queue_and_fleet(by_hand) == (harness.task_queue, None)

        fleet.path.write_text('name = "alpha"\n' + fleet_toml(harness.platform.url, a.id))
        assert await fleet.run("apply", "--prune") == [f"{a.id}: unchanged", f"{b.id}: drain (pruned)"]
        result = await asyncio.wait_for(harness.client.get_workflow_handle(workflow_id(b.id)).result(), timeout=30)
        assert ConnectResult.model_validate(result).phase == "stopped"
        for kept in (a, by_hand, other):
            assert await fleet.is_running(kept), kept.id


async def test_fleet_task_queue_from_workspace_then_cli_then_defaults(harness: Harness, fleet: Fleet) -> None:
    a, b = await harness.workspace("a"), await harness.workspace("b")
    own_queue = new_task_queue()
    text = fleet_toml(harness.platform.url, a.id, b.id, **{b.id: {"task_queue": f'"{own_queue}"'}})
    fleet.path.write_text(text.replace("[defaults]\n", f'[defaults]\ntask_queue = "{harness.task_queue}"\n', 1))
    second_worker = running_worker(harness.client, task_queue=own_queue, token_for=harness.tokens.token_for)
    async with harness.worker(), second_worker:
        assert await fleet.run("apply", queue=False) == [f"{a.id}: start", f"{b.id}: start"]
        assert (await fleet.task_queue_and_fleet(a))[0] == harness.task_queue  # [defaults] task_queue
        assert (await fleet.task_queue_and_fleet(b))[0] == own_queue  # the workspace's own
        assert await fleet.run("apply", queue=False) == [f"{a.id}: unchanged", f"{b.id}: unchanged"]

        # --task-queue overrides [defaults], not a workspace's own task queue.
        elsewhere = new_task_queue()
        lines = await fleet.run("apply", "--task-queue", elsewhere, queue=False, expect=1)
        assert lines == [
            f"{a.id}: restart needed (drain, then apply): task_queue {harness.task_queue} → {elsewhere}",
            f"{b.id}: unchanged",
        ]


async def test_fleet_bad_file_exits_2_with_one_line_naming_the_line(fleet: Fleet, harness: Harness) -> None:
    fleet.path.write_text(
        '[defaults]\nplatform_url = "http://x"\n\n[[workspace]]\nid = "ws-a"\nsettings = { poll_interval_s = 0 }\n'
    )
    process = await asyncio.create_subprocess_exec(
        str(CLI), "fleet", "apply", str(fleet.path), env=fleet.env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    [line] = stderr.decode().splitlines()
    assert line.startswith(f"molecule-connect: {fleet.path}:6: [[workspace]] #1 (ws-a): settings.poll_interval_s: ")

    fleet.path.write_text('[[workspace]]\nid = "ws-a"\ntoken = "abc"\n')
    process = await asyncio.create_subprocess_exec(
        str(CLI), "fleet", "status", str(fleet.path), env=fleet.env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    [line] = stderr.decode().splitlines()
    assert f"{fleet.path}:3: " in line and "MOLECULE_TOKENS_FILE" in line and "abc" not in line
