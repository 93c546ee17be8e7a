"""The claude-code backend against a fake ``claude`` that records its argv and stdin and keeps sessions like Claude.

The fake refuses ``--session-id`` for a session it already has ("already in use") and ``--resume`` for one it has
not ("No conversation found"), as Claude Code does, so the session choice is checked against the real rules.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from activities.a2a import A2AMessage, TextPart
from activities.backends import create_backend
from activities.backends.base import BackendConfigError, BackendError, BackendRequest
from activities.backends.claude_code import ClaudeCodeBackend, session_id
from activities.backends.exec import ExecFailedError
from tests.unit.commands.processes import process_running, wait_until

FAKE_CLAUDE = """\
#!{python}
import json, os, subprocess, sys, time

args = sys.argv[1:]
stdin = sys.stdin.read()
with open(os.environ["FAKE_CLAUDE_LOG"], "a") as log:
    env = {{k: v for k, v in os.environ.items() if k.startswith("MOLECULE_")}}
    log.write(json.dumps({{"argv": args, "stdin": stdin, "env": env, "cwd": os.getcwd()}}) + "\\n")
store = os.environ["FAKE_CLAUDE_SESSIONS"]
turn = 1
if "--session-id" in args:
    session = args[args.index("--session-id") + 1]
    path = os.path.join(store, session)
    if os.path.exists(path):
        sys.exit(f"Error: Session ID {{session}} is already in use.")
    open(path, "w").write(stdin + "\\n")
elif "--resume" in args:
    session = args[args.index("--resume") + 1]
    path = os.path.join(store, session)
    if not os.path.exists(path):
        sys.exit(f"No conversation found with session ID: {{session}}")
    with open(path, "a") as transcript:
        transcript.write(stdin + "\\n")
    turn = len(open(path).read().splitlines())
if stdin == "hang":
    child = subprocess.Popen(["sleep", "30"])
    open("claude.pid.tmp", "w").write(f"{{os.getpid()}} {{child.pid}}")
    os.rename("claude.pid.tmp", "claude.pid")
    time.sleep(30)
if stdin == "fail":
    sys.stderr.write("API Error: 529 overloaded")
    sys.exit(1)
print(f"turn {{turn}}: {{stdin}}")
"""


@pytest.fixture
def fake_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write the fake ``claude`` and point its log and session store into ``tmp_path``; return its path."""
    program = tmp_path / "bin" / "claude"
    program.parent.mkdir()
    program.write_text(FAKE_CLAUDE.format(python=sys.executable))
    program.chmod(0o755)
    (tmp_path / "claude-store").mkdir()
    monkeypatch.setenv("FAKE_CLAUDE_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("FAKE_CLAUDE_SESSIONS", str(tmp_path / "claude-store"))
    return program


def _calls(tmp_path: Path) -> list[dict[str, Any]]:
    log = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _backend(fake_claude: Path, tmp_path: Path, **options: str) -> ClaudeCodeBackend:
    return ClaudeCodeBackend({"bin": str(fake_claude), "state_dir": str(tmp_path / "state"), **options})


def _request(text: str = "hello", *, context_id: str | None = "ctx-1", workspace_id: str = "ws-1") -> BackendRequest:
    return BackendRequest(
        workspace_id=workspace_id,
        row_id=f"row-{uuid.uuid4()}",
        source_id="ws-peer",
        lane=context_id or "ws-peer",
        message=A2AMessage(message_id="msg-1", context_id=context_id, parts=[TextPart(text=text)]),
        text=text,
    )


async def _reply(backend: ClaudeCodeBackend, request: BackendRequest) -> str:
    response = await backend.handle(request)
    assert len(response.parts) == 1
    part = response.parts[0]
    assert isinstance(part, TextPart)
    return part.text


def _session_flag(call: dict[str, Any]) -> tuple[str, str]:
    argv = call["argv"]
    flag = next(arg for arg in argv if arg in ("--session-id", "--resume"))
    return flag, argv[argv.index(flag) + 1]


async def test_claude_code_first_message_runs_print_mode_with_session_id_and_text_on_stdin(
    fake_claude: Path, tmp_path: Path
):
    backend = _backend(fake_claude, tmp_path, args="--model claude-x --append-system-prompt 'be brief; no $HOME'")

    assert await _reply(backend, _request("what is 2+2?")) == "turn 1: what is 2+2?"

    [call] = _calls(tmp_path)
    expected_session = session_id("ws-1", "ctx-1")
    assert call["argv"] == [
        "-p",
        "--session-id",
        expected_session,
        "--model",
        "claude-x",
        "--append-system-prompt",
        "be brief; no $HOME",
    ]
    assert call["stdin"] == "what is 2+2?"


async def test_claude_code_second_message_of_conversation_resumes_same_session(fake_claude: Path, tmp_path: Path):
    backend = _backend(fake_claude, tmp_path)

    await _reply(backend, _request("one"))
    assert await _reply(backend, _request("two")) == "turn 2: two"

    first, second = _calls(tmp_path)
    assert _session_flag(first) == ("--session-id", session_id("ws-1", "ctx-1"))
    assert _session_flag(second) == ("--resume", session_id("ws-1", "ctx-1"))


async def test_claude_code_other_conversation_or_workspace_gets_its_own_session(fake_claude: Path, tmp_path: Path):
    backend = _backend(fake_claude, tmp_path)

    await _reply(backend, _request("a", context_id="ctx-1"))
    await _reply(backend, _request("b", context_id="ctx-2"))
    await _reply(backend, _request("c", context_id="ctx-1", workspace_id="ws-2"))

    flags = [_session_flag(call) for call in _calls(tmp_path)]
    assert [flag for flag, _ in flags] == ["--session-id"] * 3
    assert len({session for _, session in flags}) == 3
    assert session_id("ws-1", "ctx-1") == session_id("ws-1", "ctx-1") != session_id("ws-1", "ctx-2")
    uuid.UUID(session_id("ws-1", "ctx-1"))


async def test_claude_code_new_backend_after_restart_resumes_from_marker(fake_claude: Path, tmp_path: Path):
    """A worker restart builds a new backend; the marker under state_dir says the session exists."""
    await _reply(_backend(fake_claude, tmp_path), _request("before restart"))

    assert await _reply(_backend(fake_claude, tmp_path), _request("after restart")) == "turn 2: after restart"

    assert [_session_flag(call)[0] for call in _calls(tmp_path)] == ["--session-id", "--resume"]


async def test_claude_code_session_exists_without_marker_falls_back_to_resume(fake_claude: Path, tmp_path: Path):
    """The worker died after Claude recorded the session but before the marker: --session-id is refused."""
    await _reply(_backend(fake_claude, tmp_path, state_dir=str(tmp_path / "lost")), _request("one"))

    assert await _reply(_backend(fake_claude, tmp_path), _request("two")) == "turn 2: two"

    assert [_session_flag(call)[0] for call in _calls(tmp_path)] == ["--session-id", "--session-id", "--resume"]
    assert (tmp_path / "state" / "sessions" / session_id("ws-1", "ctx-1")).exists()


async def test_claude_code_marker_without_session_falls_back_to_session_id(fake_claude: Path, tmp_path: Path):
    """Claude's storage was wiped (or cwd changed): --resume finds nothing, so the session starts afresh."""
    backend = _backend(fake_claude, tmp_path)
    await _reply(backend, _request("one"))
    (tmp_path / "claude-store" / session_id("ws-1", "ctx-1")).unlink()

    assert await _reply(backend, _request("two")) == "turn 1: two"

    assert [_session_flag(call)[0] for call in _calls(tmp_path)] == ["--session-id", "--resume", "--session-id"]
    assert await _reply(backend, _request("three")) == "turn 2: three"


async def test_claude_code_sessions_false_passes_no_session_flags(fake_claude: Path, tmp_path: Path):
    backend = _backend(fake_claude, tmp_path, sessions="false", args="--continue")

    await _reply(backend, _request("one"))

    assert _calls(tmp_path)[0]["argv"] == ["-p", "--continue"]


async def test_claude_code_env_has_molecule_metadata_by_default_and_no_token(
    fake_claude: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MOLECULE_WORKSPACE_TOKEN", "secret-token")
    request = _request("hi")

    await _reply(_backend(fake_claude, tmp_path), request)
    await _reply(_backend(fake_claude, tmp_path, env="false"), _request("hi"))

    with_metadata, without = (call["env"] for call in _calls(tmp_path))
    assert with_metadata["MOLECULE_WORKSPACE_ID"] == "ws-1"
    assert with_metadata["MOLECULE_ROW_ID"] == request.row_id
    assert with_metadata["MOLECULE_CONTEXT_ID"] == "ctx-1"
    assert "MOLECULE_WORKSPACE_TOKEN" not in with_metadata
    assert without == {}


async def test_claude_code_nonzero_exit_raises_with_stderr_tail_and_writes_no_marker(fake_claude: Path, tmp_path: Path):
    backend = _backend(fake_claude, tmp_path)

    with pytest.raises(ExecFailedError, match=r"^claude-code: .*claude' exited with status 1: API Error: 529"):
        await backend.handle(_request("fail"))

    assert not (tmp_path / "state" / "sessions" / session_id("ws-1", "ctx-1")).exists()
    # The retry finds the session Claude recorded before failing, and continues it.
    assert await _reply(backend, _request("retry")) == "turn 2: retry"


def _pids(cwd: Path) -> list[int]:
    return [int(pid) for pid in (cwd / "claude.pid").read_text().split()]


async def test_claude_code_timeout_kills_process_group(fake_claude: Path, tmp_path: Path):
    backend = _backend(fake_claude, tmp_path, cwd=str(tmp_path), timeout="1s", grace="200ms")

    with pytest.raises(BackendError, match=r"^claude-code: timed out after 1s$"):
        await backend.handle(_request("hang"))

    pids = _pids(tmp_path)
    await wait_until(lambda: not [pid for pid in pids if process_running(pid)], timeout_s=10.0)


async def test_claude_code_cancel_kills_process_group_and_reraises(fake_claude: Path, tmp_path: Path):
    backend = _backend(fake_claude, tmp_path, cwd=str(tmp_path))
    task = asyncio.create_task(backend.handle(_request("hang")))
    await wait_until(lambda: (tmp_path / "claude.pid").exists(), timeout_s=10.0)
    pids = _pids(tmp_path)
    assert all(process_running(pid) for pid in pids)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await wait_until(lambda: not [pid for pid in pids if process_running(pid)], timeout_s=10.0)


def test_claude_code_defaults_are_claude_on_path_and_five_minutes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "claude").write_text("#!/bin/sh\n")
    (tmp_path / "claude").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("MOLECULE_CONNECT_STATE_DIR", str(tmp_path / "state"))

    backend = create_backend("claude-code", {})

    assert isinstance(backend, ClaudeCodeBackend)
    assert backend.options.timeout.total_seconds() == 300
    assert backend.options.env is True
    assert (tmp_path / "state" / "claude-code" / "sessions").is_dir()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"bin": "no-such-claude-xyz"}, "claude-code: program 'no-such-claude-xyz' not found on PATH; install"),
        ({"args": "--resume abc"}, "claude-code: option 'args' must not hold --resume: the backend picks"),
        ({"args": "--model 'unbalanced"}, "claude-code: option 'args': cannot split argument line"),
        ({"timeout": "soon"}, "claude-code: option 'timeout': invalid duration 'soon'"),
        ({"cwd": "/no/such/dir"}, "claude-code: -o cwd='/no/such/dir' is not a directory"),
        ({"model": "x"}, "claude-code: unknown option 'model' (known: bin, args, timeout, env, cwd, sessions"),
    ],
)
def test_claude_code_bad_options_raise_config_error(
    fake_claude: Path, tmp_path: Path, options: dict[str, str], expected: str
):
    with pytest.raises(BackendConfigError) as caught:
        ClaudeCodeBackend({"bin": str(fake_claude), "state_dir": str(tmp_path / "state"), **options})

    assert str(caught.value).startswith(expected), str(caught.value)
