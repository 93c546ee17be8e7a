"""The backend registry: built-ins, plugins found through a real dist-info on sys.path, and lookup errors."""

from __future__ import annotations

import importlib.metadata
import textwrap
import uuid
from pathlib import Path

import pytest

from activities.a2a import A2AMessage, TextPart
from activities.backends import (
    ENTRY_POINT_GROUP,
    BackendConfigError,
    BackendRequest,
    available_backends,
    create_backend,
)
from activities.backends.echo import EchoBackend
from activities.backends.exec import ExecBackend
from activities.backends.process.environment import BASE_VARIABLES, CLAUDE_CODE_VARIABLES, NEVER_PASSED

_PLUGIN_SOURCE = '''
from activities.a2a import TextPart
from activities.backends import BackendResponse
from activities.backends.options import BackendOptions, parse_options


class ShoutOptions(BackendOptions):
    suffix: str = "!"
    """Appended to the shout."""


class ShoutBackend:
    """Shout the message back.

    More detail that the summary leaves out.
    """

    options_model = ShoutOptions

    def __init__(self, options):
        self.options = parse_options(ShoutOptions, options, backend="shout")

    async def handle(self, request):
        return BackendResponse(parts=[TextPart(text=request.text.upper() + self.options.suffix)])

    async def close(self):
        pass


def make_whisper(options):
    if options:
        raise ValueError("whisper takes no options")
    return ShoutBackend({"suffix": "..."})


def make_hollow(options):
    return object()
'''


def _request(text: str = "hello") -> BackendRequest:
    return BackendRequest(
        workspace_id="ws-1",
        row_id="row-7",
        source_id=None,
        lane="canvas",
        message=A2AMessage(message_id="msg-1", parts=[TextPart(text=text)]),
        text=text,
    )


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Install a fake distribution (dist-info + module) on sys.path; return its module name."""
    module = f"fake_backend_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(_PLUGIN_SOURCE)
    dist_info = tmp_path / "fake_backend_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-backend-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(
            f"""\
            [{ENTRY_POINT_GROUP}]
            shout = {module}:ShoutBackend
            whisper = {module}:make_whisper
            hollow = {module}:make_hollow
            broken = no_such_module_xyz:factory
            echo = {module}:ShoutBackend
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return module


def test_create_backend_builtin_names_build_builtins():
    assert isinstance(create_backend("echo", {}), EchoBackend)
    assert isinstance(create_backend("exec", {"cmd": "cat"}), ExecBackend)


def test_create_backend_builtin_bad_options_raise_config_error():
    with pytest.raises(BackendConfigError, match="^exec: missing required option 'cmd'"):
        create_backend("exec", {})


def test_create_backend_unknown_name_lists_choices():
    with pytest.raises(BackendConfigError, match=r"^unknown backend 'nope': choose one of echo, exec\b"):
        create_backend("nope", {})


async def test_create_backend_plugin_class_from_dist_info_handles_message(plugin: str):
    backend = create_backend("shout", {"suffix": "?!"})

    response = await backend.handle(_request("hey"))

    assert response.parts == [TextPart(text="HEY?!")]


async def test_create_backend_plugin_factory_function_builds_backend(plugin: str):
    response = await create_backend("whisper", {}).handle(_request("psst"))

    assert response.parts == [TextPart(text="PSST...")]


def test_create_backend_plugin_option_error_passes_through(plugin: str):
    with pytest.raises(BackendConfigError, match=r"^shout: unknown option 'volume' \(known: suffix\)$"):
        create_backend("shout", {"volume": "11"})


def test_create_backend_plugin_own_exception_becomes_config_error(plugin: str):
    with pytest.raises(BackendConfigError, match=r"^backend 'whisper' \(.*:make_whisper\): ValueError: whisper takes"):
        create_backend("whisper", {"x": "1"})


def test_create_backend_plugin_import_failure_raises_config_error(plugin: str):
    with pytest.raises(BackendConfigError, match="^backend 'broken': cannot load no_such_module_xyz:factory: "):
        create_backend("broken", {})


def test_create_backend_plugin_returning_non_backend_raises_config_error(plugin: str):
    with pytest.raises(BackendConfigError, match=r"made a object, which lacks handle\(\)/close\(\)"):
        create_backend("hollow", {})


def test_create_backend_plugin_named_like_builtin_is_ignored(plugin: str):
    assert isinstance(create_backend("echo", {}), EchoBackend)


def test_create_backend_unknown_name_lists_plugins_after_builtins(plugin: str):
    with pytest.raises(BackendConfigError) as caught:
        create_backend("nope", {})

    assert (
        str(caught.value)
        == "unknown backend 'nope': choose one of echo, exec, claude-code, http, broken, hollow, shout, whisper"
    )


def test_create_backend_entry_point_from_monkeypatched_metadata_loads(monkeypatch: pytest.MonkeyPatch):
    entry_point = importlib.metadata.EntryPoint(
        name="parrot", value="activities.backends.echo:EchoBackend", group=ENTRY_POINT_GROUP
    )

    def fake_entry_points(**selection):
        return importlib.metadata.EntryPoints([entry_point] if selection.get("group") == ENTRY_POINT_GROUP else [])

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)

    assert isinstance(create_backend("parrot", {"template": "{text}"}), EchoBackend)


def test_available_backends_builtins_describe_their_options():
    infos = available_backends()

    assert list(infos)[:2] == ["echo", "exec"]
    exec_options = {option.name: option for option in infos["exec"].options}
    assert infos["exec"].origin == "built-in"
    assert exec_options["cmd"].required and exec_options["cmd"].default is None
    assert exec_options["timeout"].default == "60s"
    assert exec_options["env"].default == "true"
    assert all(option.help for option in exec_options.values())
    assert infos["echo"].options[0].default == "echo: {text}"
    assert exec_options["pass_env"].default == ""


def test_available_backends_say_which_variables_reach_commands():
    infos = available_backends()

    exec_env, claude_env = infos["exec"].child_env, infos["claude-code"].child_env
    assert exec_env is not None and claude_env is not None
    assert exec_env.inherited == BASE_VARIABLES
    assert claude_env.inherited == (*BASE_VARIABLES, *CLAUDE_CODE_VARIABLES)
    assert exec_env.never == claude_env.never == NEVER_PASSED
    assert infos["echo"].child_env is None and infos["http"].child_env is None


def test_available_backends_plugins_listed_with_options_and_load_errors(plugin: str):
    infos = available_backends()

    shout = infos["shout"]
    assert shout.summary == "Shout the message back."
    assert shout.origin == f"{plugin}:ShoutBackend from fake-backend-plugin 1.0"
    assert [(o.name, o.default, o.help) for o in shout.options] == [("suffix", "!", "Appended to the shout.")]
    assert infos["whisper"].options == ()
    assert infos["broken"].load_error is not None and "no_such_module_xyz" in infos["broken"].load_error
    assert infos["echo"].origin == "built-in"
