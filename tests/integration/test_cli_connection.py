"""Connecting like the ``temporal`` CLI, through the real console script: flags, profiles, ``--version``, ``-h``,
shell completion, and ``server info|start|stop`` for the embedded dev server.

A command "reached" the server when ``status`` of an unknown workspace says there is no such connector (exit 2),
instead of ``cannot reach Temporal`` (also exit 2, another line).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from tests.helpers import wait_until
from tests.integration import test_cli_connectors
from tests.integration.test_cli_connectors import CliRun, assert_one_line, cli
from worker.devserver import find_temporal_binary

cli_env = test_cli_connectors.cli_env

REFUSED = "127.0.0.1:1"
UNKNOWN_WS = "ws-that-was-never-connected"


def reached(run: CliRun) -> None:
    assert_one_line(run, 2, f"no connector for workspace {UNKNOWN_WS}")


@pytest.fixture
def address(temporal_env: WorkflowEnvironment) -> str:
    return temporal_env.client.service_client.config.target_host


@pytest.fixture
def refused_env(cli_env: dict[str, str]) -> dict[str, str]:
    """The environment points at a port nothing listens on: only a flag can reach the test server."""
    return {**cli_env, "TEMPORAL_ADDRESS": REFUSED}


async def test_address_flag_overrides_the_environment(refused_env: dict[str, str], address: str) -> None:
    assert_one_line(await cli(refused_env, "status", UNKNOWN_WS), 2, f"cannot reach Temporal at {REFUSED}")
    reached(await cli(refused_env, "status", UNKNOWN_WS, "--address", address))


async def test_profile_flag_reads_the_config_file(cli_env: dict[str, str], address: str, tmp_path: Path) -> None:
    config = tmp_path / "temporal.toml"
    config.write_text(f'[profile.local]\naddress = "{address}"\nnamespace = "default"\n')
    env = {k: v for k, v in cli_env.items() if k not in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE")}
    env["TEMPORAL_CONFIG_FILE"] = str(config)
    reached(await cli(env, "status", UNKNOWN_WS, "--profile", "local"))
    missing = await cli(env, "status", UNKNOWN_WS, "--profile", "nope")
    assert_one_line(missing, 2, "nope")


async def test_namespace_flag_is_used(cli_env: dict[str, str]) -> None:
    run = await cli(cli_env, "status", UNKNOWN_WS, "-n", "no-such-namespace")
    assert_one_line(run, 2, "no-such-namespace")


async def test_api_key_env_takes_a_variable_name_never_the_key(cli_env: dict[str, str]) -> None:
    unset = await cli(cli_env, "status", UNKNOWN_WS, "--api-key-env", "MY_TEMPORAL_KEY")
    assert_one_line(unset, 2, "--api-key-env MY_TEMPORAL_KEY", "not set")
    pasted = await cli(cli_env, "status", UNKNOWN_WS, "--api-key-env", "eyJhbGciOi.secret-looking.key")
    line = assert_one_line(pasted, 2, "NAME of an environment variable")
    assert "eyJhbGciOi" not in line


async def test_tls_flags_need_a_configured_server(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in cli_env.items() if k != "TEMPORAL_ADDRESS"}
    run = await cli(env, "status", UNKNOWN_WS, "--tls-cert-path", str(tmp_path / "c.pem"))
    assert_one_line(run, 2, "--tls-cert-path needs a Temporal server", "--address")


async def test_every_connecting_command_takes_the_connection_flags(refused_env: dict[str, str], address: str) -> None:
    """One command per group, with the flag after its own arguments as with the ``temporal`` CLI."""
    commands = [
        ["pause", UNKNOWN_WS],
        ["dead-letters", UNKNOWN_WS],
        ["history", "export", "--workflow-id", f"connect-{UNKNOWN_WS}", "-o", "/dev/null"],
    ]
    for command in commands:
        run = await cli(refused_env, *command, "--address", address, "--namespace", "default")
        assert run.code == 2, run
        assert "cannot reach Temporal" not in run.stderr, run


async def test_version_help_and_completion(cli_env: dict[str, str]) -> None:
    version = await cli(cli_env, "--version")
    assert version.code == 0 and version.stdout.startswith("molecule-connect "), version
    short_help = await cli(cli_env, "status", "-h")
    assert short_help.code == 0 and "--address" in short_help.stdout and "--api-key-env" in short_help.stdout
    # Typer picks the shell from the environment (make exports SHELL; a bare pytest run may have none).
    script = await cli({**cli_env, "SHELL": "/bin/bash"}, "--show-completion", "bash")
    assert script.code == 0 and "_MOLECULE_CONNECT_COMPLETE" in script.stdout, script
    completion_env = {
        **cli_env,
        "_MOLECULE_CONNECT_COMPLETE": "complete_bash",
        "COMP_WORDS": "molecule-connect se",
        "COMP_CWORD": "1",
    }
    completed = await cli(completion_env)
    assert completed.code == 0 and completed.stdout.split() == ["server"], completed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the embedded server -------------------------------------------------------------------------------------------


@pytest.fixture
def embedded_env(cli_env: dict[str, str], tmp_path: Path):
    """No Temporal configured: commands use the embedded server of a fresh state directory (stopped at the end)."""
    env = {k: v for k, v in cli_env.items() if k not in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE")}
    env["MOLECULE_CONNECT_STATE_DIR"] = str(tmp_path / "embedded-state")
    yield env
    subprocess.run(
        [str(test_cli_connectors.CLI), "server", "stop"], env=env, capture_output=True, timeout=60, check=False
    )


async def test_server_info_start_stop_and_env_for_the_temporal_cli(embedded_env: dict[str, str]) -> None:
    assert_one_line(await cli(embedded_env, "server", "info"), 1, "no embedded Temporal dev server", "server start")

    started = await cli(embedded_env, "server", "start", "--json", timeout=120)
    assert started.code == 0, started
    fields = json.loads(started.stdout)
    assert set(fields) >= {"address", "namespace", "ui_url", "db_path", "pid"}
    assert fields["db_path"] == str(Path(embedded_env["MOLECULE_CONNECT_STATE_DIR"]) / "temporal.db")

    info = await cli(embedded_env, "server", "info")
    assert info.code == 0, info
    assert f"address    {fields['address']}" in info.stdout and f"web ui     {fields['ui_url']}" in info.stdout

    # What a user pastes: the temporal CLI then talks to the embedded server.
    script = (
        'eval "$(molecule-connect server info --env)" && '
        "temporal workflow list --query 'WorkflowType = \"ConnectWorkflow\"' --output json && "
        'echo "address=$TEMPORAL_ADDRESS namespace=$TEMPORAL_NAMESPACE"'
    )
    path = f"{find_temporal_binary().parent}{os.pathsep}{embedded_env['PATH']}"
    shell = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", script], env={**embedded_env, "PATH": path}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    assert f"address={fields['address']} namespace=default" in shell.stdout

    # The codec server admits the embedded UI's (random) origin by default.
    port = _free_port()
    codec = await asyncio.create_subprocess_exec(
        str(test_cli_connectors.CLI), "codec-server", "--port", str(port),
        env={**embedded_env, "MOLECULE_CODEC_KEYS": "k:" + "A" * 43 + "="},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def preflight(origin: str) -> httpx.Response | None:
                headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
                with contextlib.suppress(httpx.TransportError):
                    return await http.options("/decode", headers=headers)
                return None

            allowed = await wait_until(lambda: preflight(fields["ui_url"]), message="codec server up")
            assert allowed.status_code == 200
            assert allowed.headers["access-control-allow-origin"] == fields["ui_url"]
            refused = await preflight("http://elsewhere.example")
            assert refused is not None and refused.status_code == 400
    finally:
        codec.terminate()
        await codec.wait()

    stopped = await cli(embedded_env, "server", "stop", timeout=60)
    assert stopped.code == 0 and f"pid {fields['pid']}" in stopped.stderr, stopped
    assert (await cli(embedded_env, "server", "info")).code == 1
