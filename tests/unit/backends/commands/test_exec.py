"""The exec backend: stdin/stdout, environment, failures, process-group kills on timeout and cancellation."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from activities.a2a import A2AMessage, TextPart
from activities.backends.base import BackendConfigError, BackendError, BackendRequest
from activities.backends.exec import ExecBackend
from activities.backends.process import ExecFailedError
from activities.backends.process import run as process_run
from activities.backends.process.environment import BASE_VARIABLES, metadata_env
from tests.unit.backends.commands.processes import process_running, wait_until


def _request(text: str = "hello", *, source_id: str | None = "ws-peer", attempt: int = 1) -> BackendRequest:
    return BackendRequest(
        workspace_id="ws-1",
        row_id="row-7",
        source_id=source_id,
        lane="ctx-1",
        message=A2AMessage(message_id="msg-1", context_id="ctx-1", parts=[TextPart(text=text)]),
        text=text,
        attempt=attempt,
    )


async def _reply(backend: ExecBackend, text: str = "hello", **fields) -> str:
    response = await backend.handle(_request(text, **fields))
    assert len(response.parts) == 1
    part = response.parts[0]
    assert isinstance(part, TextPart)
    return part.text


def _pids(directory: Path) -> list[int]:
    return [int((directory / name).read_text()) for name in ("shell.pid", "grandchild.pid")]


# The shell records its own pid and its background child's (atomically, via mv), then waits on a second sleep.
_TREE = (
    "sh -c 'echo $$ > shell.tmp && mv shell.tmp shell.pid; "
    "sleep 30 & echo $! > gc.tmp && mv gc.tmp grandchild.pid; sleep 30'"
)


async def test_exec_tr_uppercases_message():
    assert await _reply(ExecBackend({"cmd": "tr a-z A-Z"}), "hello world") == "HELLO WORLD"


async def test_exec_utf8_text_round_trips_through_stdin_and_stdout():
    text = "héllo ✓ 日本語 🚀"

    assert await _reply(ExecBackend({"cmd": "cat"}), text) == text


async def test_exec_large_input_and_output_do_not_deadlock():
    """1 MiB each way: stdin is fed while stdout is read, so neither pipe buffer fills up."""
    text = "x" * (1024 * 1024)

    assert await _reply(ExecBackend({"cmd": "cat"}), text) == text


async def test_exec_command_ignoring_stdin_still_replies():
    assert await _reply(ExecBackend({"cmd": "echo ignored"}), "y" * (1024 * 1024)) == "ignored"


async def test_exec_command_exiting_before_stdin_is_written_still_replies():
    """A race: on uvloop a pipe whose reader has gone is closed at once, and writing to it raised RuntimeError
    (about one run in 30 failed before stdin writes checked for it)."""
    backend = ExecBackend({"cmd": "true"})

    for _ in range(100):
        assert await _reply(backend, "not read") == ""


async def test_exec_only_one_trailing_newline_is_stripped():
    assert await _reply(ExecBackend({"cmd": r"printf 'a\n\n'"})) == "a\n"
    assert await _reply(ExecBackend({"cmd": r"printf 'b\r\n'"})) == "b"


async def test_exec_no_output_replies_empty_text():
    assert await _reply(ExecBackend({"cmd": "true"})) == ""


async def test_exec_no_shell_message_and_args_not_interpreted():
    backend = ExecBackend({"cmd": "echo $HOME '*' `id`"})

    assert await _reply(backend) == "$HOME * `id`"


async def test_exec_json_stdin_sends_whole_request():
    request = _request("hi there")

    response = await ExecBackend({"cmd": "cat", "stdin": "json"}).handle(request)

    part = response.parts[0]
    assert isinstance(part, TextPart)
    assert json.loads(part.text) == request.model_dump(mode="json")


async def test_exec_cwd_runs_command_there(tmp_path: Path):
    reply = await _reply(ExecBackend({"cmd": "pwd", "cwd": str(tmp_path)}))

    assert Path(reply).resolve() == tmp_path.resolve()


# A real child that prints its whole environment as JSON (values may hold newlines, so not `env`).
_PRINT_ENV = f"{shlex.quote(sys.executable)} -c 'import json, os; print(json.dumps(dict(os.environ)))'"

WORKER_SECRETS = {
    "MOLECULE_CODEC_KEYS": "codec-key-secret-1",
    "TEMPORAL_API_KEY": "temporal-key-secret-2",
    "TEMPORAL_TLS_CLIENT_KEY_PATH": "/run/secrets/client-secret-3.key",
    "TEMPORAL_TLS_CLIENT_CERT_PATH": "/run/secrets/client-secret-4.pem",
    "TEMPORAL_GRPC_META_AUTHORIZATION": "Bearer grpc-secret-5",
    "MOLECULE_WORKSPACE_TOKEN": "tok-secret-6",
    "MOLECULE_TOKEN": "tok-secret-7",
    "MOLECULE_TOKENS_FILE": "/run/tok-secret-8.toml",
    "MOLECULE_INBOUND_SECRET": "tok-secret-9",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-10",
}
"""What a worker may hold that no command may see by default."""


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker environment with its secrets, cloud credentials, locale and unrelated settings set."""
    for name, value in WORKER_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AGENT_SETTING", "kept-when-named")
    monkeypatch.setenv("MYAPP_ONE", "1")
    monkeypatch.setenv("MYAPP_TWO", "2")
    monkeypatch.setenv("HOME", "/home/worker")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("LC_TIME", "C")
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("MOLECULE_API_URL", "http://platform.example")


async def _child_env(backend: ExecBackend, **fields) -> dict[str, str]:
    return json.loads(await _reply(backend, **fields))


def _allowed_by_default(name: str) -> bool:
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in BASE_VARIABLES)


async def test_exec_child_env_is_the_allowlist_and_metadata_only(worker_env: None):
    env = await _child_env(ExecBackend({"cmd": _PRINT_ENV}), source_id=None, attempt=3)

    assert env["PATH"] == os.environ["PATH"]
    assert (env["HOME"], env["LANG"], env["LC_TIME"], env["TZ"]) == ("/home/worker", "C.UTF-8", "C", "UTC")
    assert {name: env.get(name) for name in metadata_env(_request())} == {
        "MOLECULE_WORKSPACE_ID": "ws-1",
        "MOLECULE_ROW_ID": "row-7",
        "MOLECULE_SOURCE_ID": "",
        "MOLECULE_CONTEXT_ID": "ctx-1",
        "MOLECULE_MESSAGE_ID": "msg-1",
        "MOLECULE_ATTEMPT": "3",
    }
    unexpected = {name for name in env if not _allowed_by_default(name) and name not in metadata_env(_request())}
    # Python itself may add LC_CTYPE when it coerces the C locale; nothing else from the worker gets through.
    assert unexpected <= {"LC_CTYPE"}, unexpected
    for name in [*WORKER_SECRETS, "AGENT_SETTING", "AWS_REGION", "MYAPP_ONE", "MOLECULE_API_URL"]:
        assert name not in env
    assert not [value for value in env.values() if "secret" in value]


async def test_exec_pass_env_names_and_prefixes_reach_the_child(worker_env: None):
    backend = ExecBackend({"cmd": _PRINT_ENV, "pass_env": "AGENT_SETTING, MYAPP_*,AWS_*, NOT_SET_ANYWHERE"})

    env = await _child_env(backend)

    assert (env["AGENT_SETTING"], env["MYAPP_ONE"], env["MYAPP_TWO"]) == ("kept-when-named", "1", "2")
    assert (env["AWS_REGION"], env["AWS_SECRET_ACCESS_KEY"]) == ("eu-west-1", "aws-secret-10")
    assert "NOT_SET_ANYWHERE" not in env
    assert backend.options.pass_env == "AGENT_SETTING,MYAPP_*,AWS_*,NOT_SET_ANYWHERE"


async def test_exec_pass_env_prefix_never_matches_worker_secrets(worker_env: None):
    backend = ExecBackend({"cmd": _PRINT_ENV, "pass_env": "MOLECULE_*,TEMPORAL_*"})

    env = await _child_env(backend)

    assert env["MOLECULE_API_URL"] == "http://platform.example"
    for name in WORKER_SECRETS:
        if name != "AWS_SECRET_ACCESS_KEY":
            assert name not in env, name


async def test_exec_env_false_adds_no_metadata():
    env = await _child_env(ExecBackend({"cmd": _PRINT_ENV, "env": "false"}))

    assert not [name for name in env if name.startswith("MOLECULE_")]


async def test_exec_failure_text_never_carries_a_passed_secret_value(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AGENT_API_TOKEN", "agent-token-value-123")
    backend = ExecBackend(
        {"cmd": """sh -c 'echo "auth failed for $AGENT_API_TOKEN" >&2; exit 2'""", "pass_env": "AGENT_API_TOKEN"}
    )

    with pytest.raises(ExecFailedError) as caught:
        await backend.handle(_request())

    assert "agent-token-value-123" not in str(caught.value)
    assert str(caught.value).endswith("auth failed for [AGENT_API_TOKEN]")
    assert caught.value.stderr_tail == "auth failed for [AGENT_API_TOKEN]"


@pytest.mark.parametrize(
    ("pass_env", "expected"),
    [
        ("MOLECULE_CODEC_KEYS", "'MOLECULE_CODEC_KEYS' is a secret of the worker and is never passed to a command"),
        ("PATH,TEMPORAL_API_KEY", "'TEMPORAL_API_KEY' is a secret of the worker"),
        ("TEMPORAL_TLS_CLIENT_KEY_PATH", "'TEMPORAL_TLS_CLIENT_KEY_PATH' is a secret of the worker"),
        ("TEMPORAL_TLS_*", "'TEMPORAL_TLS_*' is a secret of the worker"),
        ("MOLECULE_WORKSPACE_TOKEN", "'MOLECULE_WORKSPACE_TOKEN' is a secret of the worker"),
        ("molecule_tokens_file", "'molecule_tokens_file' is a secret of the worker"),
        ("TEMPORAL_GRPC_META_AUTHORIZATION", "'TEMPORAL_GRPC_META_AUTHORIZATION' is a secret of the worker"),
        ("OPENAI_API_KEY=sk-123", "'OPENAI_API_KEY': pass_env takes variable names, never values"),
        ("*", "'*' would hand the worker's whole environment to the command; name the variables"),
        ("1ABC", "'1ABC' is not a variable name"),
        ("A*B", "'A*B' is not a variable name"),
        ("MOLECULE_ROW_ID", "'MOLECULE_ROW_ID' is set per message by the backend (-o env=true)"),
    ],
)
def test_exec_pass_env_refuses_values_bad_names_and_worker_secrets(pass_env: str, expected: str):
    with pytest.raises(BackendConfigError) as caught:
        ExecBackend({"cmd": "cat", "pass_env": pass_env})

    assert str(caught.value).startswith(f"exec: option 'pass_env': {expected}"), str(caught.value)
    assert "sk-123" not in str(caught.value)


async def test_exec_nonzero_exit_raises_backend_error_with_stderr_tail():
    script = "i=0; while [ $i -lt 200 ]; do echo noise$i >&2; i=$((i+1)); done; echo boom >&2; exit 3"
    backend = ExecBackend({"cmd": f"sh -c '{script}'"})

    with pytest.raises(ExecFailedError) as caught:
        await backend.handle(_request())

    assert isinstance(caught.value, BackendError)
    assert caught.value.returncode == 3
    assert caught.value.stderr_tail.endswith("boom")
    assert len(caught.value.stderr_tail) <= 500
    assert "noise0" not in str(caught.value)
    assert str(caught.value).startswith("exec: 'sh' exited with status 3: ")


async def test_exec_timeout_kills_whole_process_group(tmp_path: Path):
    backend = ExecBackend({"cmd": _TREE, "cwd": str(tmp_path), "timeout": "1s"})

    with pytest.raises(BackendError, match=r"^exec: timed out after 1s$"):
        await backend.handle(_request())

    pids = _pids(tmp_path)
    assert not [pid for pid in pids if process_running(pid)]


async def test_exec_cancel_kills_whole_process_group_and_reraises(tmp_path: Path):
    backend = ExecBackend({"cmd": _TREE, "cwd": str(tmp_path), "timeout": "30s"})
    task = asyncio.create_task(backend.handle(_request()))
    await wait_until(lambda: (tmp_path / "grandchild.pid").exists())
    pids = _pids(tmp_path)
    assert all(process_running(pid) for pid in pids)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not [pid for pid in pids if process_running(pid)]


async def test_exec_group_ignoring_sigterm_is_killed_after_grace(tmp_path: Path):
    cmd = 'sh -c \'trap "" TERM; ' + _TREE.removeprefix("sh -c '")
    backend = ExecBackend({"cmd": cmd, "cwd": str(tmp_path), "timeout": "1s", "grace": "200ms"})

    with pytest.raises(BackendError, match="timed out"):
        await backend.handle(_request())

    # SIGKILLed processes may take a moment to be reaped on a loaded machine.
    await wait_until(lambda: not [pid for pid in _pids(tmp_path) if process_running(pid)])


async def test_exec_background_leftovers_get_sigterm_after_success():
    """The reply is the pid of a background job that closed stdout; it must not outlive the message."""
    backend = ExecBackend({"cmd": "sh -c 'sleep 30 > /dev/null 2>&1 & echo $!'"})

    leftover = int(await _reply(backend))

    await wait_until(lambda: not process_running(leftover))


async def test_exec_output_over_cap_raises_backend_error_and_kills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(process_run, "MAX_STDOUT_BYTES", 100_000)
    backend = ExecBackend({"cmd": "sh -c 'echo $$ > shell.pid; exec yes'", "cwd": str(tmp_path)})

    with pytest.raises(BackendError, match="output exceeded 100000 bytes"):
        await backend.handle(_request())

    assert not process_running(int((tmp_path / "shell.pid").read_text()))


def test_exec_command_not_on_path_raises_config_error():
    with pytest.raises(BackendConfigError, match="command 'no-such-program-xyz' not found on PATH"):
        ExecBackend({"cmd": "no-such-program-xyz --flag"})


def test_exec_non_executable_file_raises_config_error(tmp_path: Path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")

    with pytest.raises(BackendConfigError, match="is not executable"):
        ExecBackend({"cmd": str(script)})


async def test_exec_program_removed_after_start_raises_config_error(tmp_path: Path):
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    backend = ExecBackend({"cmd": "./agent.sh", "cwd": str(tmp_path)})
    assert await _reply(backend) == "hi"
    script.unlink()

    with pytest.raises(BackendConfigError, match=r"^exec: cannot run './agent.sh' in .*sh -c"):
        await backend.handle(_request())


def test_exec_unknown_option_raises_config_error():
    with pytest.raises(
        BackendConfigError,
        match=r"^exec: unknown option 'foo' \(known: cmd, timeout, env, pass_env, cwd, stdin, grace, format\)$",
    ):
        ExecBackend({"cmd": "cat", "foo": "1"})


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, "exec: missing required option 'cmd' (-o cmd=...)"),
        ({"cmd": "cat", "timeout": "soon"}, "exec: option 'timeout': invalid duration 'soon'"),
        ({"cmd": "cat", "env": "maybe"}, "exec: option 'env' must be true or false, not 'maybe'"),
        ({"cmd": "sh -c 'unbalanced"}, "exec: option 'cmd': cannot split command line"),
        ({"cmd": "   "}, "exec: option 'cmd': empty command line"),
        ({"cmd": "cat", "cwd": "/no/such/dir"}, "exec: -o cwd='/no/such/dir' is not a directory"),
    ],
)
def test_exec_bad_options_raise_config_error(options: dict[str, str], expected: str):
    with pytest.raises(BackendConfigError) as caught:
        ExecBackend(options)

    assert str(caught.value).startswith(expected)
