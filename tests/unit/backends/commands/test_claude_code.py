"""The claude-code backend against a fake ``claude`` that speaks like the real one (``fake_claude.py`` here).

The fake accepts the real CLI's options (from its ``--help``), keeps sessions by Claude Code's rules and prints the
real CLI's outputs, word for word and on the same stream, for its failures (fixtures/claude_code_cli.json): not
logged in, invalid API key, no credit, unknown model, unknown option, session in use, no conversation found.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from activities.a2a import A2AMessage, TextPart
from activities.backends import create_backend
from activities.backends.base import BackendConfigError, BackendError, BackendRequest
from activities.backends.claude_code import MAX_SESSION_IDS, ClaudeCodeBackend, next_session_id, session_id
from activities.backends.process import ExecFailedError
from activities.backends.process.environment import BASE_VARIABLES, CLAUDE_CODE_VARIABLES, metadata_env
from tests.unit.backends.commands import fake_claude as fake
from tests.unit.backends.commands.processes import process_running, wait_until

FIXTURE_OUTPUTS = fake.OUTPUTS


@pytest.fixture
def fake_claude(tmp_path: Path) -> Path:
    """Install the fake ``claude`` under ``tmp_path`` (state in ``tmp_path/claude-state``); return its path."""
    return fake.install(tmp_path)


def _state(tmp_path: Path) -> Path:
    return tmp_path / "claude-state"


def _calls(tmp_path: Path) -> list[dict[str, Any]]:
    log = _state(tmp_path) / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _set_account(tmp_path: Path, state: str) -> None:
    (_state(tmp_path) / "account").write_text(state)


def _fixture_words(name: str, **values: str) -> str:
    """What the real CLI prints for a fixture, as one stripped line."""
    output = FIXTURE_OUTPUTS[name]
    return (str(output["stdout"]) + str(output["stderr"])).format(**values).strip()


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
    (_state(tmp_path) / "sessions" / session_id("ws-1", "ctx-1")).unlink()

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
    assert not [name for name in without if name.startswith("MOLECULE_")]


WORKER_SECRETS = {
    "MOLECULE_CODEC_KEYS": "codec-key-secret-1",
    "TEMPORAL_API_KEY": "temporal-key-secret-2",
    "TEMPORAL_TLS_CLIENT_KEY_PATH": "/run/secrets/client-secret-3.key",
    "MOLECULE_WORKSPACE_TOKEN": "tok-secret-4",
    "MOLECULE_TOKENS_FILE": "/run/tok-secret-5.toml",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-6",
}
CLAUDE_SETTINGS = {
    "ANTHROPIC_API_KEY": "sk-ant-api-key-value",
    "ANTHROPIC_BASE_URL": "https://llm-gateway.example",
    "ANTHROPIC_MODEL": "claude-x",
    "CLAUDE_CONFIG_DIR": "/srv/claude-config",
    "CLAUDE_CODE_USE_BEDROCK": "1",
    "HTTPS_PROXY": "http://proxy.example:3128",
}


def _default_name(name: str) -> bool:
    patterns = (*BASE_VARIABLES, *CLAUDE_CODE_VARIABLES)
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


async def test_claude_code_child_env_is_allowlist_with_claude_settings_and_no_worker_secret(
    fake_claude: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    for name, value in {**WORKER_SECRETS, **CLAUDE_SETTINGS, "AWS_REGION": "eu-west-1", "OTHER": "x"}.items():
        monkeypatch.setenv(name, value)

    await _reply(_backend(fake_claude, tmp_path), _request("hi"))

    [call] = _calls(tmp_path)
    env = call["env"]
    assert {name: env.get(name) for name in CLAUDE_SETTINGS} == CLAUDE_SETTINGS
    assert env["PATH"] and env["HOME"]
    for name in [*WORKER_SECRETS, "AWS_REGION", "OTHER"]:
        assert name not in env, name
    metadata = set(metadata_env(_request()))
    # Python (the fake) may add LC_CTYPE when it coerces the C locale; nothing else from the worker gets through.
    assert {name for name in env if not _default_name(name) and name not in metadata} <= {"LC_CTYPE"}


async def test_claude_code_pass_env_adds_cloud_credentials_never_worker_secrets(
    fake_claude: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    for name, value in {**WORKER_SECRETS, "AWS_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)

    await _reply(_backend(fake_claude, tmp_path, pass_env="AWS_*,TEMPORAL_*,MOLECULE_*"), _request("hi"))

    env = _calls(tmp_path)[0]["env"]
    assert (env["AWS_REGION"], env["AWS_SECRET_ACCESS_KEY"]) == ("eu-west-1", "aws-secret-6")
    for name in WORKER_SECRETS:
        if not name.startswith("AWS_"):
            assert name not in env, name


@pytest.mark.parametrize("name", ["MOLECULE_CODEC_KEYS", "TEMPORAL_API_KEY", "TEMPORAL_TLS_CLIENT_KEY_PATH"])
def test_claude_code_pass_env_naming_a_worker_secret_is_refused(fake_claude: Path, tmp_path: Path, name: str):
    with pytest.raises(BackendConfigError, match=rf"^claude-code: option 'pass_env': '{name}' is a secret of the"):
        _backend(fake_claude, tmp_path, pass_env=f"AWS_REGION,{name}")


@pytest.mark.parametrize(
    ("account", "args", "fixture", "values"),
    [
        ("logged_out", "", "not_logged_in", {}),
        ("invalid_api_key", "", "invalid_api_key", {}),
        ("no_credit", "", "credit_balance_too_low", {}),
        ("ok", "--model nosuchmodel", "unknown_model", {"model": "nosuchmodel"}),
        ("ok", "--bogus-flag", "unknown_option", {"option": "--bogus-flag"}),
        ("ok", "--permission-mode", "missing_option_value", {"usage": "--permission-mode <mode>"}),
    ],
)
async def test_claude_code_cannot_run_raises_config_error_with_claudes_words(
    fake_claude: Path, tmp_path: Path, account: str, args: str, fixture: str, values: dict[str, str]
):
    """Claude prints these on stdout or on stderr, exits 1; the connector must block with its words, not retry."""
    _set_account(tmp_path, account)
    backend = _backend(fake_claude, tmp_path, args=args)

    with pytest.raises(BackendConfigError) as caught:
        await backend.handle(_request("the message text"))

    words = _fixture_words(fixture, **values)
    assert str(caught.value).startswith(f"claude-code: Claude Code cannot run: {words}; "), str(caught.value)
    assert "the message text" not in str(caught.value)
    assert len(_calls(tmp_path)) == 1


async def test_claude_code_not_logged_in_then_logged_in_continues_the_conversation(fake_claude: Path, tmp_path: Path):
    """Claude records the session before it finds it is not logged in: after login, the id is "already in use"."""
    backend = _backend(fake_claude, tmp_path)
    _set_account(tmp_path, "logged_out")
    with pytest.raises(BackendConfigError, match="Not logged in · Please run /login"):
        await backend.handle(_request("one"))

    _set_account(tmp_path, "ok")
    assert await _reply(backend, _request("one")) == "turn 2: one"
    assert await _reply(backend, _request("two")) == "turn 3: two"

    flags = [_session_flag(call)[0] for call in _calls(tmp_path)]
    assert flags == ["--session-id", "--session-id", "--resume", "--resume"]


async def test_claude_code_transcript_without_conversation_moves_to_next_session_id(fake_claude: Path, tmp_path: Path):
    """Claude killed as it started leaves a transcript it can neither resume nor reuse: both flags are refused."""
    first = session_id("ws-1", "ctx-1")
    (_state(tmp_path) / "sessions" / first).write_text("")
    backend = _backend(fake_claude, tmp_path)

    assert await _reply(backend, _request("one")) == "turn 1: one"
    assert await _reply(backend, _request("two")) == "turn 2: two"

    second = next_session_id(first)
    assert [_session_flag(call) for call in _calls(tmp_path)] == [
        ("--session-id", first),
        ("--resume", first),
        ("--session-id", second),
        ("--resume", second),
    ]
    assert (tmp_path / "state" / "sessions" / first).read_text().strip() == second
    # A worker that lost its markers walks the same chain and finds the conversation.
    lost = _backend(fake_claude, tmp_path, state_dir=str(tmp_path / "lost"))
    assert await _reply(lost, _request("three")) == "turn 3: three"
    assert [_session_flag(call) for call in _calls(tmp_path)[4:]] == [
        ("--session-id", first),
        ("--resume", first),
        ("--session-id", second),
        ("--resume", second),
    ]


async def test_claude_code_every_session_id_unusable_fails_the_message_after_bounded_runs(
    fake_claude: Path, tmp_path: Path
):
    session = session_id("ws-1", "ctx-1")
    chain = []
    for _ in range(MAX_SESSION_IDS):
        chain.append(session)
        (_state(tmp_path) / "sessions" / session).write_text("")
        session = next_session_id(session)

    with pytest.raises(ExecFailedError) as caught:
        await _backend(fake_claude, tmp_path).handle(_request("one"))

    assert str(caught.value).endswith(_fixture_words("session_not_found", session=chain[-1]))
    assert len(_calls(tmp_path)) == 2 * MAX_SESSION_IDS


async def test_claude_code_failure_reported_on_stdout_only_is_in_the_error(fake_claude: Path, tmp_path: Path):
    with pytest.raises(ExecFailedError) as caught:
        await _backend(fake_claude, tmp_path).handle(_request("crash"))

    assert str(caught.value).endswith("exited with status 1: (stderr empty; stdout ends with: something went wrong)")


async def test_claude_code_error_never_carries_the_api_key(
    fake_claude: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api-key-value")

    with pytest.raises(ExecFailedError) as caught:
        await _backend(fake_claude, tmp_path).handle(_request("leak"))

    assert "sk-ant-api-key-value" not in str(caught.value)
    assert str(caught.value).endswith("request failed with key [ANTHROPIC_API_KEY]")


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
        ({"model": "x"}, "claude-code: unknown option 'model' (known: bin, args, timeout, env, pass_env, cwd, sess"),
    ],
)
def test_claude_code_bad_options_raise_config_error(
    fake_claude: Path, tmp_path: Path, options: dict[str, str], expected: str
):
    with pytest.raises(BackendConfigError) as caught:
        ClaudeCodeBackend({"bin": str(fake_claude), "state_dir": str(tmp_path / "state"), **options})

    assert str(caught.value).startswith(expected), str(caught.value)
