"""Fleet files: defaults merged into workspaces, one-line errors naming the line, no secrets; the pure plan step."""

from __future__ import annotations

from pathlib import Path

import pytest

from activities.messages import BackendSpec
from worker.fleet import FleetFileError, Observed, check_backends, decide, load_fleet
from workflows.messages import ConnectInput, ConnectSettings

FLEET = """\
[defaults]
platform_url = "http://127.0.0.1:8080/"
backend = "exec"
options = { cmd = "cat", timeout = 30 }
settings = { max_concurrency = 8, poll_interval_s = 0.5 }

[[workspace]]
id = "ws-a"

[[workspace]]
id = "ws-b"
options = { env = true }

[workspace.settings]
max_attempts = 3
max_concurrency = 2

[[workspace]]
id = "ws-c"
backend = "echo"
platform_url = "https://other.example"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(FleetFileError) as raised:
        load_fleet(write(tmp_path, text))
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_load_fleet_defaults_merged_key_by_key_into_each_workspace(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, FLEET))
    a, b, c = fleet.connectors
    assert fleet.workspace_ids == ["ws-a", "ws-b", "ws-c"]
    assert a.platform_url == "http://127.0.0.1:8080"
    assert a.backend == BackendSpec(name="exec", options={"cmd": "cat", "timeout": "30"})
    assert (a.settings.max_concurrency, a.settings.poll_interval_s, a.settings.max_attempts) == (8, 0.5, 5)
    assert b.backend.options == {"cmd": "cat", "timeout": "30", "env": "true"}
    assert (b.settings.max_concurrency, b.settings.poll_interval_s, b.settings.max_attempts) == (2, 0.5, 3)


def test_load_fleet_other_backend_does_not_inherit_default_options(tmp_path: Path) -> None:
    c = load_fleet(write(tmp_path, FLEET)).connectors[2]
    assert c.backend == BackendSpec(name="echo")
    assert c.platform_url == "https://other.example"


def test_load_fleet_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[defaults]\nplatform_url = "http://x"\n\n[[workspace]]\nid "ws-a"\n')
    assert message.startswith(f"{tmp_path / 'fleet.toml'}:5:")
    assert "invalid TOML" in message


def test_load_fleet_invalid_setting_names_workspace_line_and_field(tmp_path: Path) -> None:
    text = FLEET.replace("max_attempts = 3", "max_attempts = 0")
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'fleet.toml'}:15: [[workspace]] #2 (ws-b): settings.max_attempts:")
    assert "greater than or equal to 1" in message


def test_load_fleet_invalid_default_setting_names_defaults_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, FLEET.replace("poll_interval_s = 0.5", "poll_interval_s = -1"))
    assert message.startswith(f"{tmp_path / 'fleet.toml'}:5: [[workspace]] #1 (ws-a), from [defaults]: ")
    assert "settings.poll_interval_s" in message


def test_load_fleet_unknown_key_rejected_with_its_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, FLEET.replace('backend = "echo"', 'backend = "echo"\nbackedn = "exec"'))
    assert message.startswith(f"{tmp_path / 'fleet.toml'}:21: [[workspace]] #3 (ws-c): backedn: Extra inputs")


def test_load_fleet_unknown_setting_rejected(tmp_path: Path) -> None:
    message = error_of(tmp_path, FLEET.replace("max_attempts = 3", "max_attempt = 3"))
    assert ":15: [[workspace]] #2 (ws-b): settings.max_attempt: Extra inputs" in message


@pytest.mark.parametrize("key", ["token", "api_key", "secret"])
def test_load_fleet_secret_key_rejected_pointing_to_tokens_file(tmp_path: Path, key: str) -> None:
    message = error_of(tmp_path, FLEET.replace('id = "ws-a"', f'id = "ws-a"\n{key} = "s3cr3t"'))
    assert message.startswith(f"{tmp_path / 'fleet.toml'}:9: [[workspace]] #1 (ws-a): {key}: ")
    assert "MOLECULE_TOKENS_FILE" in message
    assert "s3cr3t" not in message


def test_load_fleet_duplicate_id_rejected(tmp_path: Path) -> None:
    message = error_of(tmp_path, FLEET.replace('id = "ws-c"', 'id = "ws-a"'))
    assert ":19: [[workspace]] #3 (ws-a): id: duplicate workspace id 'ws-a'" in message


def test_load_fleet_missing_platform_url_and_empty_fleet_rejected(tmp_path: Path) -> None:
    assert "no platform_url" in error_of(tmp_path, '[[workspace]]\nid = "ws-a"\n')
    assert "lists no [[workspace]]" in error_of(tmp_path, '[defaults]\nplatform_url = "http://x"\n')
    assert "platform_url must start with http" in error_of(tmp_path, FLEET.replace("https://other", "ftp://other"))


def test_load_fleet_missing_file_one_line(tmp_path: Path) -> None:
    with pytest.raises(FleetFileError, match="cannot read fleet file .*nope.toml"):
        load_fleet(tmp_path / "nope.toml")


def test_load_fleet_name_defaults_to_file_stem_and_can_be_set(tmp_path: Path) -> None:
    assert load_fleet(write(tmp_path, FLEET)).name == "fleet"
    assert load_fleet(write(tmp_path, 'name = "prod"\n' + FLEET)).name == "prod"
    assert "name: String should have at least 1 character" in error_of(tmp_path, 'name = " "\n' + FLEET)


def test_load_fleet_task_queue_workspace_then_override_then_defaults_then_default(tmp_path: Path) -> None:
    without = load_fleet(write(tmp_path, FLEET))
    assert [without.task_queue_of(w) for w in without.workspace_ids] == ["molecule-connect"] * 3
    assert without.task_queue_of("ws-a", "cli-q") == "cli-q"

    text = FLEET.replace('backend = "exec"', 'backend = "exec"\ntask_queue = "fleet-q"', 1)
    text = text.replace('id = "ws-b"', 'id = "ws-b"\ntask_queue = "own-q"')
    fleet = load_fleet(write(tmp_path, text))
    assert [fleet.task_queue_of(w) for w in fleet.workspace_ids] == ["fleet-q", "own-q", "fleet-q"]
    assert [fleet.task_queue_of(w, "cli-q") for w in fleet.workspace_ids] == ["cli-q", "own-q", "cli-q"]
    assert fleet.all_task_queues() == ["fleet-q", "own-q"]
    assert fleet.all_task_queues("cli-q") == ["cli-q", "own-q"]


async def test_check_backends_bad_option_names_workspace(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, FLEET.replace("timeout = 30", "timeout = 30, bogus = 1")))
    with pytest.raises(FleetFileError, match=r"workspace ws-a: .*bogus"):
        await check_backends(fleet)


# --- decide: the pure comparison behind `fleet apply` ------------------------------------------------------------


def desired(**settings: object) -> ConnectInput:
    return ConnectInput(
        workspace_id="ws-a",
        platform_url="http://p",
        backend=BackendSpec(name="exec", options={"cmd": "cat"}),
        settings=ConnectSettings(**settings),  # type: ignore[arg-type]
    )


def running(**changes: object) -> Observed:
    base: dict[str, object] = {
        "running": True,
        "task_queue": "tq",
        "platform_url": "http://p",
        "backend": BackendSpec(name="exec", options={"cmd": "cat"}),
        "settings": ConnectSettings(),
    }
    return Observed(**{**base, **changes})  # type: ignore[arg-type]


def test_decide_not_running_starts() -> None:
    step = decide(desired(), Observed(running=False), task_queue="tq")
    assert (step.kind, step.input, step.describe()) == ("start", desired(), "ws-a: start")


def test_decide_same_settings_unchanged_and_changed_ones_configured() -> None:
    assert decide(desired(), running(), task_queue="tq").describe() == "ws-a: unchanged"
    step = decide(desired(max_concurrency=8, error_reply=False), running(), task_queue="tq")
    assert step.kind == "configure"
    assert step.changes == {"max_concurrency": 8, "error_reply": False}
    assert step.describe() == "ws-a: configure max_concurrency=8 error_reply=false"


@pytest.mark.parametrize(
    ("observed", "reason"),
    [
        (running(platform_url="http://old"), "platform_url http://old → http://p"),
        (
            running(backend=BackendSpec(name="exec", options={"cmd": "tac"})),
            "backend exec(cmd='tac') → exec(cmd='cat')",
        ),
        (running(task_queue="other"), "task_queue other → tq"),
    ],
)
def test_decide_fixed_field_changed_needs_restart(observed: Observed, reason: str) -> None:
    step = decide(desired(max_concurrency=8), observed, task_queue="tq")
    assert step.kind == "restart"
    assert step.describe() == f"ws-a: restart needed (drain, then apply): {reason}"


def test_decide_unreadable_state_is_an_error_step() -> None:
    step = decide(desired(), Observed(running=True, error="no answer within 5s"), task_queue="tq")
    assert step.describe() == "ws-a: error: no answer within 5s"
