"""``molecule-connect backends``: every installed backend with its summary and options, plugins and load errors
included."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import pytest

from activities.backends import ENTRY_POINT_GROUP
from worker.cli import main

_PLUGIN_SOURCE = '''
from activities.backends.options import BackendOptions, parse_options


class RelayOptions(BackendOptions):
    target: str
    """Where to relay messages."""
    retries: int = 3
    """How many times to try."""


class RelayBackend:
    """Relay messages somewhere else.

    Details the listing leaves out.
    """

    options_model = RelayOptions

    def __init__(self, options):
        self.options = parse_options(RelayOptions, options, backend="relay")

    async def handle(self, request):
        raise NotImplementedError

    async def close(self):
        pass


def make_bare(options):
    return RelayBackend({"target": "x"})
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fake distribution on sys.path with a described plugin, an undescribed one and a broken one."""
    module = f"fake_relay_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(_PLUGIN_SOURCE)
    dist_info = tmp_path / "fake_relay_plugin-2.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-relay-plugin\nVersion: 2.1\n")
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(
            f"""\
            [{ENTRY_POINT_GROUP}]
            relay = {module}:RelayBackend
            bare = {module}:make_bare
            broken = no_such_module_for_cli_xyz:factory
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return module


def _invoke(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int | str | None, str, str]:
    try:
        main(["backends", *args])
        code: int | str | None = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def _section(out: str, name: str) -> str:
    """The lines of one backend's entry in the listing."""
    blocks = out.split("\n\n")
    return next(block for block in blocks if block.startswith(f"{name} ("))


def test_backends_lists_builtins_with_summary_options_defaults_and_help(capsys):
    code, out, err = _invoke(capsys)

    assert (code, err) == (0, "")
    names = [block.split(" (", 1)[0] for block in out.strip().split("\n\n")]
    assert names[:4] == ["echo", "exec", "claude-code", "http"]
    http = _section(out, "http")
    assert http.startswith("http (built-in): Forward each message to an A2A v0.3 agent")
    assert "  -o url=<required>\n       The agent's A2A JSON-RPC endpoint" in http
    assert "  -o auth_header=Authorization\n" in http
    claude = _section(out, "claude-code")
    assert "  -o bin=claude\n" in claude
    assert "  -o timeout=300s\n" in claude
    assert "  -o args=''\n" in claude
    assert "  -o cwd=<unset>\n" in claude
    exec_ = _section(out, "exec")
    assert "  -o format=text\n       Alias: format=json sets stdin=json" in exec_
    assert "  -o pass_env=''\n       Worker variables the command also gets, by name" in exec_


def test_backends_shows_which_variables_reach_each_command(capsys):
    code, out, _ = _invoke(capsys)

    assert code == 0
    exec_ = " ".join(_section(out, "exec").split())
    assert "environment: PATH, HOME, USER, LOGNAME, SHELL, LANG, LANGUAGE, LC_*, TZ, TMPDIR; and what -o pass" in exec_
    assert "with -o env=true: MOLECULE_WORKSPACE_ID, MOLECULE_ROW_ID," in exec_
    assert "never: MOLECULE_CODEC_KEYS, MOLECULE_TOKENS_FILE, MOLECULE_*TOKEN*" in exec_
    assert "TEMPORAL_API_KEY, TEMPORAL_TLS*" in exec_
    claude = " ".join(_section(out, "claude-code").split())
    assert "TMPDIR, ANTHROPIC_*, CLAUDE_CODE_*, CLAUDE_CONFIG_DIR, HTTPS_PROXY, HTTP_PROXY, NO_PROXY," in claude
    assert "environment:" not in _section(out, "http") and "environment:" not in _section(out, "echo")
    assert max(len(line) for line in out.splitlines() if "MOLECULE_" in line) <= 120


def test_backends_lists_plugins_with_options_and_load_errors(capsys, plugin: str):
    code, out, _ = _invoke(capsys)

    assert code == 0
    relay = _section(out, "relay")
    assert (
        relay.splitlines()[0]
        == f"relay ({plugin}:RelayBackend from fake-relay-plugin 2.1): Relay messages somewhere else."
    )
    assert "  -o target=<required>\n       Where to relay messages." in relay
    assert "  -o retries=3\n       How many times to try." in relay
    assert _section(out, "bare").splitlines()[1] == "  (no options declared)"
    broken = _section(out, "broken").splitlines()
    assert broken[0] == "broken (no_such_module_for_cli_xyz:factory from fake-relay-plugin 2.1)"
    assert broken[1].startswith("  cannot be loaded: backend 'broken': cannot load no_such_module_for_cli_xyz:factory")
    assert "ModuleNotFoundError" in broken[1]


def test_backends_json_lists_every_backend_as_objects(capsys, plugin: str):
    code, out, _ = _invoke(capsys, "--json")

    assert code == 0
    listed = {entry["name"]: entry for entry in json.loads(out)}
    assert {"echo", "exec", "claude-code", "http", "relay", "bare", "broken"} <= set(listed)
    assert listed["http"]["origin"] == "built-in"
    assert listed["http"]["options"][0] == {
        "name": "url",
        "required": True,
        "default": None,
        "help": "The agent's A2A JSON-RPC endpoint (http:// or https://).",
    }
    assert listed["exec"]["child_env"]["inherited"][:3] == ["PATH", "HOME", "USER"]
    assert "AWS_*" not in listed["claude-code"]["child_env"]["inherited"]
    assert "ANTHROPIC_*" in listed["claude-code"]["child_env"]["inherited"]
    assert "MOLECULE_ROW_ID" in listed["exec"]["child_env"]["metadata"]
    assert "TEMPORAL_API_KEY" in listed["claude-code"]["child_env"]["never"]
    assert listed["http"]["child_env"] is None and listed["relay"]["child_env"] is None
    assert listed["relay"]["load_error"] is None
    assert "cannot load" in listed["broken"]["load_error"]
