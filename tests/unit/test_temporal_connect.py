"""connect_client: a configured server through envconfig, else the embedded dev server; one-line failures."""

from __future__ import annotations

import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.contrib.pydantic import pydantic_data_converter

from activities import local_state
from worker import settings
from worker.devserver import stop_embedded_server
from worker.temporal import TemporalConnectError, connect_client, default_config_file, is_configured


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """An environment with no Temporal configuration: HOME is empty and the config file does not exist."""
    home = tmp_path / "home"
    home.mkdir()
    return {"HOME": str(home), "TEMPORAL_CONFIG_FILE": str(tmp_path / "missing.toml")}


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "state"
    yield directory
    if directory.exists():
        stop_embedded_server(directory)


async def test_connect_client_closed_port_raises_one_line_error(bare_env: dict[str, str]) -> None:
    port = closed_port()
    env = {**bare_env, "TEMPORAL_ADDRESS": f"127.0.0.1:{port}"}
    with pytest.raises(TemporalConnectError) as info:
        await connect_client(environ=env)
    assert str(info.value) == (
        f"cannot reach Temporal at 127.0.0.1:{port} (from TEMPORAL_ADDRESS): Connection refused; is the server running?"
    )
    assert isinstance(info.value, RuntimeError)


async def test_connect_client_profile_in_config_file_names_profile(tmp_path: Path, bare_env: dict[str, str]) -> None:
    port = closed_port()
    config = tmp_path / "temporal.toml"
    config.write_text(f'[profile.staging]\naddress = "127.0.0.1:{port}"\nnamespace = "ns-x"\n')
    env = {**bare_env, "TEMPORAL_CONFIG_FILE": str(config), "TEMPORAL_PROFILE": "staging"}
    with pytest.raises(TemporalConnectError) as info:
        await connect_client(environ=env)
    assert str(info.value).startswith(f"cannot reach Temporal at 127.0.0.1:{port} (from profile staging in {config}): ")


async def test_connect_client_bad_config_file_hides_its_contents(tmp_path: Path, bare_env: dict[str, str]) -> None:
    config = tmp_path / "temporal.toml"
    config.write_text('[profile.default]\napi_key = "sk-very-secret\n')
    with pytest.raises(TemporalConnectError) as info:
        await connect_client(environ={**bare_env, "TEMPORAL_CONFIG_FILE": str(config)})
    message = str(info.value)
    assert message.startswith(f"invalid Temporal client configuration in {config}: ")
    assert "line 2" in message
    assert "sk-very-secret" not in message and "\n" not in message


async def test_connect_client_profile_without_file_says_what_to_do(bare_env: dict[str, str]) -> None:
    with pytest.raises(TemporalConnectError, match="TEMPORAL_PROFILE=prod is set but .* does not exist"):
        await connect_client(environ={**bare_env, "TEMPORAL_PROFILE": "prod"})


async def test_connect_client_nothing_configured_uses_embedded_server(
    bare_env: dict[str, str], state_dir: Path
) -> None:
    env = {**bare_env, "MOLECULE_CONNECT_STATE_DIR": str(state_dir)}
    connected = await connect_client(environ=env)

    assert connected.embedded is not None
    assert connected.embedded.db_path == state_dir / "temporal.db"
    assert connected.ui_url == connected.embedded.ui_url
    assert connected.address == connected.embedded.address
    assert connected.namespace == "default"
    assert connected.client.data_converter is pydantic_data_converter
    await connected.client.workflow_service.get_system_info(GetSystemInfoRequest())

    again = await connect_client(environ=env, state_dir=state_dir)
    assert again.embedded is not None and again.embedded.pid == connected.embedded.pid
    assert not again.embedded.started_here


def test_is_configured_sources(tmp_path: Path, bare_env: dict[str, str]) -> None:
    assert not is_configured(bare_env)
    assert is_configured({**bare_env, "TEMPORAL_ADDRESS": "temporal:7233"})
    assert is_configured({**bare_env, "TEMPORAL_PROFILE": "prod"})
    assert not is_configured({**bare_env, "TEMPORAL_NAMESPACE": "ns"})

    xdg = tmp_path / "xdg"
    env = {"HOME": bare_env["HOME"], "XDG_CONFIG_HOME": str(xdg)}
    assert default_config_file(env) == xdg / "temporalio" / "temporal.toml"
    assert not is_configured(env)
    default_config_file(env).parent.mkdir(parents=True)
    default_config_file(env).write_text("")
    assert is_configured(env)


def test_default_config_file_linux_home() -> None:
    assert default_config_file({"HOME": "/home/u"}) == Path("/home/u/.config/temporalio/temporal.toml")


def test_state_dir_from_env_is_created_private(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "state"
    assert local_state.state_dir({"MOLECULE_CONNECT_STATE_DIR": str(directory)}) == directory
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_state_dir_default_uses_platformdirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_state.platformdirs, "user_state_dir", lambda name: str(tmp_path / name))
    assert local_state.state_dir({}) == tmp_path / "molecule-connect"


def test_workflow_id_prefixes_workspace_id() -> None:
    assert settings.workflow_id("ws-1") == "connect-ws-1"
    assert settings.TASK_QUEUE == "molecule-connect"
    with pytest.raises(ValueError):
        settings.workflow_id(" ")
