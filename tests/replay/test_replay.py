"""Replay: every recorded history in tests/histories replays against the current ConnectWorkflow, and the check
can fail (a deliberately changed workflow reports a nondeterminism)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.replay.changed_workflow import ChangedConnectWorkflow
from worker.replay import load_history, replay

HISTORIES = sorted((Path(__file__).resolve().parent.parent / "histories").glob("*.json"))
CLI = str(Path(sys.executable).parent / "molecule-connect")


def test_histories_cover_the_required_scenarios() -> None:
    names = {path.stem for path in HISTORIES}
    assert {
        "plain_delivery",
        "cursor_410_recovery",
        "dead_letter_redrive",
        "continue_as_new",
        "pause_resume",
        "local_dispatch",
        "reply_fallback",
        "session_delivery",
        "backend_outage",
        "session_continue_as_new",
    } <= names


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays_cleanly_against_current_code(path: Path) -> None:
    [outcome] = await replay([(str(path), load_history(path))])
    assert outcome.ok, outcome.error


async def test_replay_of_changed_workflow_reports_nondeterminism() -> None:
    path = next(p for p in HISTORIES if p.stem == "plain_delivery")
    [outcome] = await replay([(str(path), load_history(path))], workflows=[ChangedConnectWorkflow])
    assert not outcome.ok
    assert "nondetermin" in (outcome.error or "").lower()


def test_replay_cli_history_files_report_ok_and_exit_zero() -> None:
    args = [CLI, "replay"] + [arg for path in HISTORIES for arg in ("--history", str(path))]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("OK ") == len(HISTORIES)


def test_replay_cli_not_a_history_exits_2_with_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"hello": 1}')
    done = subprocess.run([CLI, "replay", "--history", str(bogus)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "not a workflow history" in done.stderr


async def test_replay_debug_mode_survives_a_breakpoint_longer_than_two_seconds() -> None:
    """Without debug mode the SDK reports a potential deadlock; ``debug=True`` (``replay --debug``) turns it off."""
    from tests.replay.paused_workflow import PausedConnectWorkflow

    path = next(p for p in HISTORIES if p.stem == "plain_delivery")
    history = load_history(path)
    [stuck] = await replay([(str(path), history)], workflows=[PausedConnectWorkflow])
    assert not stuck.ok and "deadlock" in (stuck.error or "").lower(), stuck
    [debugged] = await replay([(str(path), history)], workflows=[PausedConnectWorkflow], debug=True)
    assert debugged.ok, debugged.error
