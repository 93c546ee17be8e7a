"""The claude-code backend against the real Claude Code CLI (npm ``@anthropic-ai/claude-code@2``), not logged in.

Checks what the fake ``claude`` of the other tests assumes: every flag the backend passes exists in the real CLI's
``--help`` with the arity the backend uses, and the real CLI, not logged in, makes the backend raise
:class:`BackendConfigError` with the words the fixtures hold. The CLI is installed once into
``~/.cache/molecule-connect-tests/claude-code`` (``$XDG_CACHE_HOME`` respected); the tests are skipped when npm is
missing, the registry cannot be reached or the install takes longer than :data:`INSTALL_TIMEOUT_S`. Nothing here
talks to the Anthropic API: a CLI that is not logged in stops before any request.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from activities.a2a import A2AMessage, TextPart
from activities.backends.base import BackendConfigError, BackendRequest
from activities.backends.claude_code import ClaudeCodeBackend
from tests.unit.backends.commands import fake_claude as fake

PACKAGE = "@anthropic-ai/claude-code@2"
INSTALL_TIMEOUT_S = 45.0
"""Longest the one-time ``npm install`` may take (it downloads Claude Code's native binary); past it, skip."""
RUN_TIMEOUT_S = 20.0


def _run(argv: list[str], timeout_s: float, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a command in its own process group; on timeout kill the whole group (npm starts children)."""
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
        return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def _works(program: Path) -> bool:
    try:
        return program.is_file() and _run([str(program), "--version"], RUN_TIMEOUT_S).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def real_claude() -> Path:
    """The real ``claude`` program, installed into the user's cache directory on first use; else skip."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "molecule-connect-tests" / "claude-code"
    program = cache / "node_modules" / ".bin" / "claude"
    if _works(program):
        return program
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: cannot install the real Claude Code CLI")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        installed = _run(
            [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--loglevel=error", PACKAGE],
            INSTALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install {PACKAGE} took longer than {INSTALL_TIMEOUT_S:.0f} s")
    except OSError as err:
        pytest.skip(f"npm install {PACKAGE} could not run: {err}")
    if installed.returncode != 0 or not _works(program):
        pytest.skip(f"npm install {PACKAGE} failed: {installed.stderr.strip()[-300:]}")
    return program


def _request(text: str) -> BackendRequest:
    return BackendRequest(
        workspace_id="ws-1",
        row_id=f"row-{uuid.uuid4()}",
        source_id="ws-peer",
        lane="ctx-1",
        message=A2AMessage(message_id="msg-1", context_id="ctx-1", parts=[TextPart(text=text)]),
        text=text,
    )


async def _flags_the_backend_passes(tmp_path: Path) -> set[str]:
    """Every flag the backend gives ``claude`` (new session, resumed session, no sessions), seen by the fake."""
    program = fake.install(tmp_path)
    state = str(tmp_path / "markers")
    with_sessions = ClaudeCodeBackend({"bin": str(program), "state_dir": state})
    await with_sessions.handle(_request("one"))
    await with_sessions.handle(_request("two"))
    await ClaudeCodeBackend({"bin": str(program), "sessions": "false"}).handle(_request("three"))
    calls = (tmp_path / "claude-state" / "calls.jsonl").read_text().splitlines()
    assert len(calls) == 3
    return {arg for line in calls for arg in json.loads(line)["argv"] if arg.startswith("-")}


async def test_every_flag_the_backend_passes_exists_in_the_real_cli(real_claude: Path, tmp_path: Path):
    help_text = _run([str(real_claude), "--help"], RUN_TIMEOUT_S).stdout
    options = fake.known_options(help_text)

    flags = await _flags_the_backend_passes(tmp_path)

    assert flags == {"-p", "--session-id", "--resume"}
    assert not flags - set(options), f"not in the real claude --help: {sorted(flags - set(options))}"
    assert options["-p"] == ""  # print mode takes no value: the text comes on stdin
    assert options["--session-id"].startswith("<")  # a required value: our UUID
    assert options["--resume"].startswith("[")  # an optional value, which we always give


async def test_real_cli_not_logged_in_blocks_with_its_own_words(
    real_claude: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """An empty HOME and no API key: the real CLI prints the not-logged-in fixture, the backend blocks."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    for name in list(os.environ):
        if name.startswith(("ANTHROPIC_", "CLAUDE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
    backend = ClaudeCodeBackend(
        {"bin": str(real_claude), "state_dir": str(tmp_path / "markers"), "cwd": str(tmp_path), "timeout": "20s"}
    )

    with pytest.raises(BackendConfigError) as caught:
        await backend.handle(_request("hi"))

    words = str(fake.OUTPUTS["not_logged_in"]["stdout"]).strip()
    assert str(caught.value).startswith(f"claude-code: Claude Code cannot run: {words}; log in"), str(caught.value)
