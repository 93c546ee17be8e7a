"""What a ``molecule-connect worker`` says at INFO, read as a person would: one line per settled message, one line
per failed attempt with the error's class and message, no traceback; and where its metrics listen.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx

from activities.messages import BackendSpec
from tests.helpers import Harness, wait_until
from tests.integration import test_cli_connectors
from tests.integration.test_cli_connectors import CLI, RunProcess

cli_env = test_cli_connectors.cli_env

# Fails on the text "fail", answers anything else.
AGENT = 'read t; if [ "$t" = fail ]; then echo boom >&2; exit 3; fi; echo "ok $t"'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_addresses(port: int) -> list[str]:
    """Local addresses listening on ``port`` (IPv4, from /proc/net/tcp), e.g. ``["127.0.0.1"]``."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, port_hex = local.partition(":")
        if int(port_hex, 16) == port and state == "0A":  # LISTEN
            found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


async def test_worker_logs_one_line_per_attempt_and_per_settled_message(
    harness: Harness, cli_env: dict[str, str], tmp_path: Path
) -> None:
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(dict(harness.tokens)))
    tokens.chmod(0o600)
    port = free_port()
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            str(CLI), "worker", "--task-queue", harness.task_queue, "--metrics-port", str(port),
            env={**cli_env, "MOLECULE_TOKENS_FILE": str(tokens)}, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    worker = RunProcess(process, log)
    try:
        await worker.wait_logged("worker running on task queue")
        assert listening_addresses(port) == ["127.0.0.1"]
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200

        await harness.start(agent, BackendSpec(name="exec", options={"cmd": f"sh -c '{AGENT}'"}), max_attempts=2)
        await harness.admin.send_text(agent.id, "fail", sender=peer, context_id="c-fail")
        await harness.admin.send_text(agent.id, "hello", sender=peer, context_id="c-ok")

        async def settled() -> bool:
            status = await harness.status(agent.id)
            return len(status.dead_letters) == 1 and status.counters.get("replied", 0) == 1

        await wait_until(settled, timeout=60, message="one dead letter and one reply")
        [letter] = (await harness.status(agent.id)).dead_letters
        await worker.wait_logged(f"dead-lettered row {letter.row_id}")
        assert await worker.stop() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    lines = worker.text().splitlines()
    assert not [ln for ln in lines if "Traceback" in ln or ln.startswith(" ")], worker.text()
    failed = [ln for ln in lines if "Completing activity as failed" in ln]
    assert len(failed) == 2, worker.text()  # max_attempts=2
    for line in failed:
        assert "Completing activity as failed: BackendFailed: exec: 'sh' exited with status 3: boom" in line
        assert "activity=dispatch" in line
    assert len([ln for ln in lines if f"dead-lettered row {letter.row_id}" in ln]) == 1
    assert len([ln for ln in lines if " replied row " in ln]) == 1
    assert not [ln for ln in lines if "({'" in ln], "the SDK's context dict stays out of text lines"
