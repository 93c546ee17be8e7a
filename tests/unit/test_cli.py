"""The ``molecule-connect`` command line: ``--help`` everywhere, and every user error as one stderr line, exit 2.

Most cases call ``worker.cli.main(argv)`` in-process (fast); a few run the installed console script, whose entry
point ends the process itself. Every environment is clean: ``HOME`` and the state directory are temp dirs and
``TEMPORAL_ADDRESS`` points at a refused port unless a test needs Temporal, so nothing can start an embedded server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
from temporalio.testing import WorkflowEnvironment

from activities.backends import available_backends
from devplatform.client import AsyncPlatformAdmin
from devplatform.server import RunningPlatform
from worker.cli import app, main

CONSOLE_SCRIPT = Path(sys.executable).with_name("molecule-connect")
REFUSED_ADDRESS = "127.0.0.1:1"
"""Nothing listens here: a command that wrongly gets past validation fails fast instead of starting a server."""
PLATFORM_URL = "http://127.0.0.1:1"


def _command_paths() -> list[list[str]]:
    """Every command and subcommand of the app, e.g. ``[]``, ``["run"]``, ``["dev-platform", "create-workspace"]``."""

    def walk(command, path: list[str]) -> list[list[str]]:
        paths = [path]
        for name, sub in getattr(command, "commands", {}).items():
            paths += walk(sub, [*path, name])
        return paths

    return walk(typer.main.get_command(app), [])


@dataclass(frozen=True)
class Outcome:
    code: int | str | None
    out: str
    err: str


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Strip Molecule/Temporal settings from this process, and return the same clean env for subprocesses."""
    for name in list(os.environ):
        if name.startswith(("MOLECULE_", "TEMPORAL_")) or name == "XDG_CONFIG_HOME":
            monkeypatch.delenv(name)
    env = {
        "HOME": str(tmp_path / "home"),
        "MOLECULE_CONNECT_STATE_DIR": str(tmp_path / "state"),
        "TEMPORAL_ADDRESS": REFUSED_ADDRESS,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # PYTHONPATH is kept so the console script imports the code under test (a worktree), not the installed copy.
    return {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "LANG": "C.UTF-8", **env}


def invoke(capsys: pytest.CaptureFixture[str], *args: str) -> Outcome:
    try:
        main(list(args))
        code: int | str | None = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return Outcome(code, out, err)


async def run_script(env: dict[str, str], *args: str) -> Outcome:
    done = await asyncio.to_thread(
        subprocess.run, [str(CONSOLE_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def assert_one_line_error(outcome: Outcome, *needles: str) -> str:
    """Exit 2, nothing on stdout, exactly one ``molecule-connect: ...`` line on stderr containing each needle."""
    lines = outcome.err.splitlines()
    assert outcome.code == 2, outcome
    assert outcome.out == ""
    assert len(lines) == 1, outcome.err
    assert lines[0].startswith("molecule-connect: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "(app)")
def test_help_every_command_exits_0(path: list[str], clean_env, capsys) -> None:
    outcome = invoke(capsys, *path, "--help")
    assert outcome.code == 0, outcome
    assert "Usage:" in outcome.out
    assert outcome.err == ""


async def test_help_console_script_exits_0(clean_env) -> None:
    outcome = await run_script(clean_env, "--help")
    assert outcome.code == 0, outcome
    assert "Usage: molecule-connect" in outcome.out
    assert "run" in outcome.out


def test_cli_no_arguments_prints_usage_exits_2(clean_env, capsys) -> None:
    outcome = invoke(capsys)
    assert outcome.code == 2
    assert "Usage:" in outcome.err


def test_run_without_platform_url_exits_2_naming_flag(clean_env, capsys) -> None:
    assert_one_line_error(invoke(capsys, "run", "ws-1"), "--platform-url", "MOLECULE_API_URL")


def test_run_ftp_platform_url_exits_2_one_line(clean_env, capsys) -> None:
    assert_one_line_error(invoke(capsys, "run", "ws-1", "--platform-url", "ftp://x"), "platform_url", "http://")


def test_run_option_without_value_exits_2_one_line(clean_env, capsys) -> None:
    args = ("run", "ws-1", "--platform-url", PLATFORM_URL, "-o", "novalue")
    assert_one_line_error(invoke(capsys, *args), "'novalue'", "KEY=VALUE")


def test_run_unknown_backend_exits_2_naming_available_backends(clean_env, capsys) -> None:
    line = assert_one_line_error(invoke(capsys, "run", "ws-1", "--platform-url", PLATFORM_URL, "-b", "nope"), "nope")
    for name in available_backends():
        assert name in line


def test_run_bad_start_from_exits_2_one_line(clean_env, capsys) -> None:
    args = ("run", "ws-1", "--platform-url", PLATFORM_URL, "--start-from", "middle")
    assert_one_line_error(invoke(capsys, *args), "--start-from", "latest", "backlog")


def test_run_exec_missing_program_exits_2_one_line(clean_env, capsys) -> None:
    args = ("run", "ws-1", "--platform-url", PLATFORM_URL, "-b", "exec", "-o", "cmd=no-such-program-xyz")
    assert_one_line_error(invoke(capsys, *args), "no-such-program-xyz")


async def test_run_without_token_exits_2_naming_env_var(clean_env) -> None:
    """The console script itself: the token check happens before anything touches Temporal."""
    outcome = await run_script(clean_env, "run", "ws-1", "--platform-url", PLATFORM_URL)
    assert_one_line_error(outcome, "MOLECULE_WORKSPACE_TOKEN")


@pytest.mark.parametrize(
    "command", [["run", "ws-1", "--platform-url", PLATFORM_URL], ["worker"]], ids=["run", "worker"]
)
def test_tokens_file_world_readable_exits_2_with_chmod_advice(
    command: list[str], clean_env, capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"ws-1": "secret-token-value"}))
    tokens.chmod(0o644)
    monkeypatch.setenv("MOLECULE_TOKENS_FILE", str(tokens))
    line = assert_one_line_error(invoke(capsys, *command), "0644", f"chmod 600 {tokens}")
    assert "secret-token-value" not in line


def test_worker_with_workspace_token_but_no_workspace_id_exits_2_saying_what_to_set(
    clean_env, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker serves many workspaces: one workspace's token without its id would be sent for all of them."""
    monkeypatch.setenv("MOLECULE_WORKSPACE_TOKEN", "secret-token-value")
    line = assert_one_line_error(invoke(capsys, "worker"), "MOLECULE_WORKSPACE_ID", "MOLECULE_TOKENS_FILE")
    assert "secret-token-value" not in line


def test_run_with_token_of_another_workspace_exits_2_naming_its_owner(
    clean_env, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOLECULE_WORKSPACE_TOKEN", "secret-token-value")
    monkeypatch.setenv("MOLECULE_WORKSPACE_ID", "ws-1")
    outcome = invoke(capsys, "run", "ws-2", "--platform-url", PLATFORM_URL)
    line = assert_one_line_error(outcome, "no token for workspace ws-2", "token of ws-1", "MOLECULE_TOKENS_FILE")
    assert "secret-token-value" not in line


def test_run_missing_tokens_file_exits_2_one_line(clean_env, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MOLECULE_TOKENS_FILE", str(tmp_path / "absent.json"))
    assert_one_line_error(invoke(capsys, "run", "ws-1", "--platform-url", PLATFORM_URL), "does not exist")


def test_status_temporal_unreachable_exits_2_one_line(clean_env, capsys) -> None:
    assert_one_line_error(invoke(capsys, "status", "ws-1"), REFUSED_ADDRESS, "TEMPORAL_ADDRESS")


async def test_status_unknown_workspace_exits_2_one_line(clean_env, temporal_env: WorkflowEnvironment) -> None:
    """Through the console script: it must exit 2 every time, never abort in interpreter shutdown."""
    env = {**clean_env, "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host}
    outcome = await run_script(env, "status", "ws-never-connected")
    assert_one_line_error(outcome, "no connector for workspace ws-never-connected", "molecule-connect run")


@pytest.mark.parametrize(
    "args",
    [["frobnicate"], ["run", "ws-1", "--bogus"], ["pause"], ["dev-platform", "--nope"], ["run", "ws-1", "-o"]],
    ids=["unknown-command", "unknown-option", "missing-argument", "unknown-subgroup-option", "option-missing-value"],
)
def test_cli_usage_error_exits_2_one_line(args: list[str], clean_env, capsys) -> None:
    assert_one_line_error(invoke(capsys, *args), "--help")


async def test_unknown_command_console_script_exits_2_one_line(clean_env) -> None:
    assert_one_line_error(await run_script(clean_env, "frobnicate"), "frobnicate")


def test_create_workspace_platform_down_exits_2_one_line(clean_env, capsys) -> None:
    outcome = invoke(capsys, "dev-platform", "create-workspace", "--platform-url", PLATFORM_URL)
    assert_one_line_error(outcome, PLATFORM_URL, "dev-platform")


async def test_create_workspace_running_platform_prints_id_and_token(clean_env, platform: RunningPlatform) -> None:
    args = ("dev-platform", "create-workspace", "--platform-url", platform.url)
    outcome = await run_script(clean_env, *args, "--admin-token", platform.settings.admin_token)
    assert outcome.code == 0, outcome
    created = json.loads(outcome.out)
    assert set(created) == {"id", "token"}
    async with AsyncPlatformAdmin(platform.url, admin_token=platform.settings.admin_token) as admin:
        assert (await admin.workspace(created["id"]))["id"] == created["id"]
        # The printed token is the workspace's own bearer: it can read the inbox.
        assert await admin.inbox(created["id"], token=created["token"]) == []
