"""Every mistake through the real ``molecule-connect`` console script: one line on stderr, an exit code, no hang.

- ``replay --workflow-id`` of a workflow that does not exist;
- ``worker --metrics-port``, ``dev-platform --port`` and ``codec-server --port`` on a port already taken;
- ``status`` of encrypted connectors without ``MOLECULE_CODEC_KEYS`` (or with the wrong key): the table shows the
  encrypted row as such and the others normally; one connector's status is one line naming the variable (and the
  key id).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

from tests.helpers import Harness
from tests.integration import test_cli_connectors
from tests.integration.test_cli_connectors import assert_one_line, cli
from worker.codec import CodecKey, EncryptionCodec, with_codec

KEY = CodecKey(key_id="ops-2026", key=bytes(range(32)))
KEY_TEXT = "ops-2026:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
OTHER_KEY_TEXT = "other-key:" + "A" * 43 + "="

cli_env = test_cli_connectors.cli_env


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port some other program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_replay_of_a_workflow_that_does_not_exist_is_one_line(cli_env: dict[str, str]) -> None:
    run = await cli(cli_env, "replay", "--workflow-id", "connect-no-such-workspace")
    assert_one_line(run, 2, "connect-no-such-workspace", "not found")


async def test_worker_metrics_port_taken_is_one_line(cli_env: dict[str, str], taken_port: int, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"ws-1": "tok"}')
    tokens.chmod(0o600)
    env = {**cli_env, "MOLECULE_TOKENS_FILE": str(tokens)}
    run = await cli(env, "worker", "--metrics-port", str(taken_port))
    assert_one_line(run, 2, f"127.0.0.1:{taken_port}", "in use", "--metrics-port", logs=True)


@pytest.mark.parametrize("command", ["dev-platform", "codec-server"])
async def test_server_port_taken_is_one_line(command: str, cli_env: dict[str, str], taken_port: int) -> None:
    run = await cli({**cli_env, "MOLECULE_CODEC_KEYS": KEY_TEXT}, command, "--port", str(taken_port))
    assert run.stdout == ""
    assert_one_line(run, 2, f"127.0.0.1:{taken_port}", "in use", "--port")


async def test_status_of_encrypted_connector_without_keys(
    harness: Harness, client: Client, cli_env: dict[str, str]
) -> None:
    """One connector's payloads are encrypted, the other's plain: without the keys the table shows both rows."""
    plain_ws, secret_ws = await harness.workspace("plain"), await harness.workspace("secret")
    encrypted = Client(**{**client.config(), "data_converter": with_codec(EncryptionCodec([KEY]))})
    secret_harness = Harness(
        client=encrypted, task_queue=f"{harness.task_queue}-enc", platform=harness.platform, admin=harness.admin,
        tokens=harness.tokens,
    )  # fmt: skip
    async with harness.worker(), secret_harness.worker():
        await harness.start(plain_ws)
        await secret_harness.start(secret_ws)

        table = await cli(cli_env, "status", "--timeout", "5")
        assert table.code == 0, table
        rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
        assert rows[plain_ws.id].split()[1] == "connected", table.stdout
        assert rows[secret_ws.id].split()[1] == "encrypted", table.stdout
        assert rows[secret_ws.id].endswith("encrypted: set MOLECULE_CODEC_KEYS"), table.stdout

        single = await cli(cli_env, "status", secret_ws.id, "--timeout", "5")
        assert_one_line(single, 2, "encrypted", "MOLECULE_CODEC_KEYS")
        wrong = await cli({**cli_env, "MOLECULE_CODEC_KEYS": OTHER_KEY_TEXT}, "status", secret_ws.id)
        assert_one_line(wrong, 2, "'ops-2026'", "MOLECULE_CODEC_KEYS")
        right = await cli({**cli_env, "MOLECULE_CODEC_KEYS": KEY_TEXT}, "status", secret_ws.id)
        assert right.code == 0, right
        assert "phase       connected" in right.stdout

        # The update is applied; only its answer cannot be read.
        paused = await cli(cli_env, "pause", secret_ws.id, "--timeout", "5")
        assert_one_line(paused, 2, "encrypted", "MOLECULE_CODEC_KEYS", "applied")
        assert (await secret_harness.status(secret_ws.id)).phase == "paused"


async def test_started_connector_has_a_readable_summary_even_when_encrypted(
    harness: Harness, client: Client, cli_env: dict[str, str]
) -> None:
    """``start`` with the codec on: the Web UI's summary stays plain JSON, the details are encrypted like the input."""
    agent = await harness.workspace("agent")
    env = {**cli_env, "MOLECULE_CODEC_KEYS": KEY_TEXT}
    started = await cli(env, "start", agent.id, "--platform-url", harness.platform.url, "--task-queue", "tq-unserved")
    assert started.code == 0, started
    handle = client.get_workflow_handle(f"connect-{agent.id}")
    description = await handle.describe()
    metadata = description.raw_description.execution_config.user_metadata
    assert metadata.summary.metadata["encoding"] == b"json/plain"
    assert json.loads(metadata.summary.data) == f"{agent.id} · echo"
    assert metadata.details.metadata["encoding"] == b"binary/encrypted"
    decrypted = Client(**{**client.config(), "data_converter": with_codec(EncryptionCodec([KEY]))})
    details = await (await decrypted.get_workflow_handle(f"connect-{agent.id}").describe()).static_details()
    assert details is not None and harness.platform.url in details and "tq-unserved" in details
    await handle.terminate()
