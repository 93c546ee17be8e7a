"""End to end: the control plane of ConnectWorkflow (pause, resume, drain, set_cursor, redrive, discard, configure)
through the SDK and through the ``molecule-connect`` CLI, on a real Temporal dev server and a real devplatform."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from activities.messages import BackendSpec, RowPointer
from devplatform.client import CreatedWorkspace
from tests.helpers import Harness, reply_message, reply_text, wait_until
from worker import control
from worker.control import ConnectorError
from workflows.connect import ConnectWorkflow
from workflows.messages import ConfigureInput, ConnectResult, DeadLetterSelection, SetCursorInput, StatusResult

QUIET_S = 2.0
"""How long a message must stay unanswered to count as held back: ten poll intervals of the ``FAST`` settings."""

CLI = Path(sys.executable).with_name("molecule-connect")


# --- helpers ----------------------------------------------------------------------------------------------------


async def _status_when(harness: Harness, workspace_id: str, check) -> StatusResult | None:
    status = await harness.status(workspace_id)
    return status if check(status) else None


def _row_of(pointer: RowPointer | None) -> str | None:
    return pointer.row_id if pointer is not None else None


def _in_reply_to(row: dict[str, Any]) -> str:
    return reply_message(row)["metadata"]["in_reply_to"]


def _is_error_reply(row: dict[str, Any]) -> bool:
    return bool(reply_message(row)["metadata"].get("error"))


async def _answers(harness: Harness, peer: CreatedWorkspace, agent: CreatedWorkspace) -> dict[str, int]:
    """Non-error replies per inbound messageId."""
    counts: dict[str, int] = {}
    for row in await harness.replies_to(peer.id, agent.id):
        if not _is_error_reply(row):
            counts[_in_reply_to(row)] = counts.get(_in_reply_to(row), 0) + 1
    return counts


async def _answered(harness: Harness, peer: CreatedWorkspace, agent: CreatedWorkspace, *message_ids: str):
    """The reply counts once every one of ``message_ids`` has an answer, else ``None`` (a ``wait_until`` predicate)."""
    counts = await _answers(harness, peer, agent)
    return counts if all(m in counts for m in message_ids) else None


async def _assert_stays_unanswered(harness: Harness, peer: CreatedWorkspace, agent: CreatedWorkspace, mid: str):
    """``mid`` gets no answer within :data:`QUIET_S` (a condition that must time out, not a sleep)."""
    with pytest.raises(AssertionError, match="timed out"):
        await wait_until(lambda: _answered(harness, peer, agent, mid), timeout=QUIET_S, message=f"answer to {mid}")


async def _row_id(harness: Harness, workspace_id: str, message_id: str) -> str:
    """The inbox row id of the inbound message ``message_id``."""
    rows = [r for r in await harness.admin.rows(workspace_id) if r.get("message_id") == message_id]
    assert len(rows) == 1, rows
    return str(rows[0]["id"])


async def _history_mentions(handle: WorkflowHandle[Any, Any], update_id: str) -> bool:
    """Whether any event of the workflow's history refers to the update ``update_id``."""
    history = await handle.fetch_history()
    return any(update_id in str(event) for event in history.events)


async def _pending_poll_ids(handle: WorkflowHandle[Any, Any]) -> set[str]:
    """Activity ids of the workflow's pending sessions, its long polls (a cancelled one stays listed until its
    worker stops it)."""
    description = await handle.describe()
    return {a.activity_id for a in description.raw_description.pending_activities if a.activity_type.name == "session"}


async def _polls_other_than(handle: WorkflowHandle[Any, Any], old: set[str]) -> set[str]:
    return await _pending_poll_ids(handle) - old


# --- pause / resume -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["update", "signal"])
async def test_pause_message_sent_while_paused_replied_only_after_resume(harness: Harness, via: str) -> None:
    """Paused, the connector neither polls nor dispatches; resuming delivers what arrived meanwhile."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker():
        handle = await harness.start(agent)
        if via == "update":
            paused = await control.pause_connector(harness.client, agent.id)
            assert paused.phase == "paused"
        else:
            await handle.signal("pause")
            await wait_until(lambda: _status_when(harness, agent.id, lambda s: s.phase == "paused"), message="paused")

        await harness.admin.send_text(agent.id, "held", sender=peer, context_id="c1", message_id="m-held")
        await _assert_stays_unanswered(harness, peer, agent, "m-held")
        assert (await harness.status(agent.id)).phase == "paused"

        if via == "update":
            resumed = await control.resume_connector(harness.client, agent.id)
            assert resumed.phase == "connected"
        else:
            await handle.signal("resume")
        answers = await wait_until(lambda: _answered(harness, peer, agent, "m-held"), message="answer after resume")
    assert answers == {"m-held": 1}


# --- drain --------------------------------------------------------------------------------------------------------


async def test_drain_update_with_pending_messages_replies_all_then_completes_stopped(harness: Harness) -> None:
    """Drain stops polling, delivers everything already fetched (even queued behind a slow backend), completes."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    slow = BackendSpec(name="exec", options={"cmd": "sh -c 'sleep 1; cat'"})
    message_ids = ["m-1", "m-2", "m-3"]
    async with harness.worker():
        handle = await harness.start(agent, slow)
        for mid in message_ids:  # one conversation: one lane, delivered one after another
            await harness.admin.send_text(agent.id, mid, sender=peer, context_id="c1", message_id=mid)
        await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["received"] == 3 and s.pending >= 2),
            message="all three fetched, at least two unanswered",
        )

        draining = await control.drain_connector(harness.client, agent.id)
        assert draining.phase == "draining"
        # Not fetched before the drain: it stays in the inbox for the next connector run.
        await harness.admin.send_text(agent.id, "late", sender=peer, context_id="c1", message_id="m-late")
        result = await asyncio.wait_for(handle.result(), timeout=30)

    assert isinstance(result, ConnectResult)
    assert result.phase == "stopped"
    assert result.counters["replied"] == 3
    assert await _answers(harness, peer, agent) == {mid: 1 for mid in message_ids}


async def test_drain_signal_idle_connector_completes_stopped(harness: Harness) -> None:
    agent = await harness.workspace("agent")
    async with harness.worker():
        handle = await harness.start(agent)
        await handle.signal("drain")
        result = await asyncio.wait_for(handle.result(), timeout=30)
    assert isinstance(result, ConnectResult)
    assert result.phase == "stopped"


# --- set_cursor ---------------------------------------------------------------------------------------------------


async def test_set_cursor_not_a_uuid_rejected_and_absent_from_history(harness: Harness) -> None:
    """A validator rejects the bad cursor: the caller gets the reason, and history never records the update."""
    agent = await harness.workspace("agent")
    async with harness.worker():
        handle = await harness.start(agent)
        before = await harness.status(agent.id)

        with pytest.raises(ConnectorError, match=r"refused: cursor must be a row id \(UUID\) or 'latest'"):
            await control.set_cursor(harness.client, agent.id, "not-a-uuid")
        with pytest.raises(WorkflowUpdateFailedError) as failed:
            await handle.execute_update(
                ConnectWorkflow.set_cursor, SetCursorInput(row_id="not-a-uuid"), id="rejected-cursor"
            )
        assert "not-a-uuid" in str(getattr(failed.value.cause, "message", failed.value.cause))
        assert (await harness.status(agent.id)).fetch_cursor == before.fetch_cursor
        # Contrast: an accepted update is in history under its id.
        await handle.execute_update(ConnectWorkflow.set_cursor, SetCursorInput(row_id="latest"), id="accepted-cursor")

        assert await _history_mentions(handle, "accepted-cursor")
        assert not await _history_mentions(handle, "rejected-cursor")
        assert not await _history_mentions(handle, "not-a-uuid")


async def test_set_cursor_latest_while_paused_skips_old_messages_delivers_new(harness: Harness) -> None:
    """Messages that arrived while paused are skipped by ``set_cursor latest``; the next one is delivered."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker():
        await harness.start(agent)
        await control.pause_connector(harness.client, agent.id)
        for mid in ("m-old-1", "m-old-2"):
            await harness.admin.send_text(agent.id, mid, sender=peer, context_id="c1", message_id=mid)

        moved = await control.set_cursor(harness.client, agent.id, "latest")
        assert moved.fetch_cursor is None and not moved.seeded
        await control.resume_connector(harness.client, agent.id)
        # The reseed must have happened before the next message, or that message would become the seed.
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.seeded and s.phase == "connected"), message="reseed"
        )
        assert _row_of(status.fetch_cursor) == await _row_id(harness, agent.id, "m-old-2")

        await harness.admin.send_text(agent.id, "new", sender=peer, context_id="c1", message_id="m-new")
        # Same lane: had the old messages been fetched, they would have been answered before this one.
        answers = await wait_until(lambda: _answered(harness, peer, agent, "m-new"), message="answer to m-new")
        status = await harness.status(agent.id)
    assert answers == {"m-new": 1}
    assert status.counters["received"] == 1


async def test_set_cursor_during_long_poll_rewind_holds_and_redelivers_nothing(harness: Harness) -> None:
    """A cursor set while a long poll waits cancels that poll; the next poll starts at it, and rows after it that
    were already settled are dropped by the dedupe window instead of being answered twice."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker():
        handle = await harness.start(agent, poll_max_wait_s=60, poll_interval_s=0.2)
        for mid in ("m-1", "m-2"):
            await harness.admin.send_text(agent.id, mid, sender=peer, context_id="c1", message_id=mid)
        await wait_until(lambda: _answered(harness, peer, agent, "m-1", "m-2"), message="first two answered")
        row_1, row_2 = await _row_id(harness, agent.id, "m-1"), await _row_id(harness, agent.id, "m-2")
        await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.pending == 0 and _row_of(s.fetch_cursor) == row_2),
            message="idle at m-2",
        )
        old_polls = await wait_until(lambda: _pending_poll_ids(handle), message="a long poll waiting on the idle inbox")

        moved = await control.set_cursor(harness.client, agent.id, row_1)
        assert _row_of(moved.fetch_cursor) == row_1
        # The new poll starts from row 1, re-reads row 2 and drops it as a duplicate.
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["duplicates"] >= 1), message="row 2 deduped"
        )
        assert _row_of(status.fetch_cursor) == row_2
        # The waiting poll was cancelled and replaced rather than left to return under the old cursor.
        await wait_until(lambda: _polls_other_than(handle, old_polls), message="a new long poll")

        await harness.admin.send_text(agent.id, "m-3", sender=peer, context_id="c1", message_id="m-3")
        answers = await wait_until(lambda: _answered(harness, peer, agent, "m-3"), message="answer to m-3")
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["replied"] == 3), message="m-3 settled"
        )
    assert answers == {"m-1": 1, "m-2": 1, "m-3": 1}
    assert _row_of(status.fetch_cursor) == await _row_id(harness, agent.id, "m-3")
    assert status.counters["received"] == 3


# --- configure ----------------------------------------------------------------------------------------------------


async def test_configure_valid_changes_show_in_status_settings(harness: Harness) -> None:
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker():
        await harness.start(agent)
        configured = await control.configure(harness.client, agent.id, {"max_concurrency": 8, "poll_interval_s": 0.5})
        status = await harness.status(agent.id)
        # The restarted poll uses the new interval and still delivers.
        await harness.admin.send_text(agent.id, "after", sender=peer, message_id="m-after")
        await wait_until(lambda: _answered(harness, peer, agent, "m-after"), message="answer after configure")
    for settings in (configured.settings, status.settings):
        assert settings.max_concurrency == 8
        assert settings.poll_interval_s == 0.5


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"max_concurency": 8}, r"unknown setting 'max_concurency' \(known: .*max_concurrency"),
        ({"max_concurrency": 0}, r"invalid max_concurrency: Input should be greater than or equal to 1"),
        ({}, r"nothing to configure"),
    ],
    ids=["unknown-key", "bad-value", "empty"],
)
async def test_configure_bad_change_rejected_naming_field_and_absent_from_history(
    harness: Harness, changes: dict[str, object], reason: str
) -> None:
    agent = await harness.workspace("agent")
    async with harness.worker():
        handle = await harness.start(agent)
        with pytest.raises(ConnectorError, match=r"refused: " + reason):
            await control.configure(harness.client, agent.id, changes)
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(ConnectWorkflow.configure, ConfigureInput(changes=changes), id="rejected")
        assert not await _history_mentions(handle, "rejected")
        status = await harness.status(agent.id)
    assert status.settings.max_concurrency == 4
    assert status.phase == "connected"


# --- dead letters -------------------------------------------------------------------------------------------------


async def test_dead_letters_redrive_after_fix_answers_once_and_discard_all_clears(
    harness: Harness, tmp_path: Path
) -> None:
    """Messages failing while others succeed are dead-lettered (the sender told); once fixed, a redrive answers
    exactly once."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    fixed = tmp_path / "ok"
    script = 'x=$(cat); case "$x" in bad*) test -f ' + str(fixed) + ' || exit 3;; esac; echo "$x"'
    flaky = BackendSpec(name="exec", options={"cmd": f"sh -c '{script}'"})
    async with harness.worker():
        await harness.start(agent, flaky, max_attempts=1)
        await harness.admin.send_text(agent.id, "good", sender=peer, context_id="c0", message_id="m-0")
        await wait_until(lambda: _answered(harness, peer, agent, "m-0"), message="a good message answered first")
        await harness.admin.send_text(agent.id, "bad one", sender=peer, context_id="c1", message_id="m-1")
        await harness.admin.send_text(agent.id, "bad two", sender=peer, context_id="c2", message_id="m-2")
        # Two failures in a row look like an outage until a good message proves the backend works.
        await harness.admin.send_text(agent.id, "good again", sender=peer, context_id="c3", message_id="m-3")
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: len(s.dead_letters) == 2), message="two dead letters"
        )
        assert {d.message_id for d in status.dead_letters} == {"m-1", "m-2"}
        assert all(d.stage == "dispatch" and d.attempts == 1 for d in status.dead_letters)
        errors = await wait_until(
            lambda: _error_replies(harness, peer, agent, 2), message="error replies to the sender"
        )
        assert all(reply_text(r).startswith("Sorry") for r in errors)
        # The sender learns a reference, never the local command or its output.
        assert all("sh -c" not in reply_text(r) and "exit" not in reply_text(r) for r in errors)

        unknown = str(uuid.uuid4())
        with pytest.raises(ConnectorError, match=f"no dead letter with row id {unknown}"):
            await control.discard(harness.client, agent.id, unknown)
        with pytest.raises(ConnectorError, match=f"no dead letter with row id {unknown}"):
            await control.redrive(harness.client, agent.id, unknown)

        fixed.touch()
        row_1 = await _row_id(harness, agent.id, "m-1")
        redriven = await control.redrive(harness.client, agent.id, row_1)
        assert (redriven.count, redriven.row_ids) == (1, [row_1])
        answers = await wait_until(lambda: _answered(harness, peer, agent, "m-1"), message="answer after redrive")
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["replied"] == 3), message="m-1 settled"
        )
        assert [d.message_id for d in status.dead_letters] == ["m-2"]

        discarded = await control.discard(harness.client, agent.id, None)
        status = await harness.status(agent.id)
    assert answers["m-1"] == 1
    replied = [_in_reply_to(r) for r in await harness.replies_to(peer.id, agent.id) if not _is_error_reply(r)]
    assert sorted(replied) == ["m-0", "m-1", "m-3"]
    assert discarded.count == 1
    assert status.dead_letters == []
    assert status.counters["redriven"] == 1


async def _error_replies(harness: Harness, peer: CreatedWorkspace, agent: CreatedWorkspace, count: int):
    rows = [r for r in await harness.replies_to(peer.id, agent.id) if _is_error_reply(r)]
    return rows if len(rows) >= count else None


# --- CLI ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliRun:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return self.stderr.strip().splitlines()


@pytest.fixture
def cli_env(temporal_env: WorkflowEnvironment, tmp_path: Path) -> dict[str, str]:
    """The environment of a ``molecule-connect`` process pointed at the test server, with no user state."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "MOLECULE_"))}
    env.update(
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        TEMPORAL_NAMESPACE=temporal_env.client.namespace,
        MOLECULE_CONNECT_STATE_DIR=str(tmp_path / "state"),
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
    )
    return env


async def _cli(env: dict[str, str], *args: str) -> CliRun:
    process = await asyncio.create_subprocess_exec(
        str(CLI), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return CliRun(process.returncode, stdout.decode(), stderr.decode())


async def test_cli_control_commands_act_on_connector_and_user_errors_exit_2_with_one_line(
    harness: Harness, cli_env: dict[str, str]
) -> None:
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    failing = BackendSpec(name="exec", options={"cmd": "sh -c 'exit 3'"})
    ws = agent.id
    async with harness.worker():
        await harness.start(agent, failing, max_attempts=1)
        await harness.admin.send_text(agent.id, "doomed", sender=peer, message_id="m-dead")
        await wait_until(lambda: _status_when(harness, ws, lambda s: s.dead_letters), message="a dead letter")
        dead_row = await _row_id(harness, ws, "m-dead")

        # Read-only commands and refusals change nothing: run them side by side.
        status, letters, bad_cursor, no_cursor, bad_config, unknown = await asyncio.gather(
            _cli(cli_env, "status", ws, "--json"),
            _cli(cli_env, "dead-letters", ws),
            _cli(cli_env, "cursor", ws, "--set", "not-a-uuid"),
            _cli(cli_env, "cursor", ws),
            _cli(cli_env, "configure", ws, "max_concurrency=0"),
            _cli(cli_env, "pause", f"no-such-{uuid.uuid4()}"),
        )
        assert status.code == 0, status.stderr
        as_json = json.loads(status.stdout)
        assert (as_json["workspace_id"], as_json["phase"]) == (ws, "connected")
        assert as_json["dead_letters"][0]["row_id"] == dead_row

        assert letters.code == 0, letters.stderr
        assert dead_row in letters.stdout and "[dispatch, 1 attempt(s)]" in letters.stdout

        for run, expected in (
            (bad_cursor, "cursor must be a row id (UUID) or 'latest', not 'not-a-uuid'"),
            (no_cursor, "give exactly one of --set ROW_ID or --latest"),
            (bad_config, "invalid max_concurrency"),
            (unknown, "no connector for workspace no-such-"),
        ):
            assert run.code == 2, run
            assert len(run.error_lines) == 1, run.stderr
            assert run.error_lines[0].startswith("molecule-connect: ") and expected in run.error_lines[0], run.stderr

        paused = await _cli(cli_env, "pause", ws)
        assert paused.code == 0, paused.stderr
        assert f"connect-{ws}: phase paused" in paused.stdout
        assert (await harness.status(ws)).phase == "paused"
        resumed = await _cli(cli_env, "resume", ws)
        assert resumed.code == 0, resumed.stderr
        assert f"connect-{ws}: phase connected" in resumed.stdout

        configured = await _cli(cli_env, "configure", ws, "max_concurrency=6")
        assert configured.code == 0, configured.stderr
        final = await harness.status(ws)
    assert final.phase == "connected"
    assert final.settings.max_concurrency == 6


# --- signal twins (for tctl and fire-and-forget clients) ------------------------------------------------------------


async def test_signal_twins_apply_like_updates_and_rejections_show_in_status(harness: Harness) -> None:
    """``configure``, ``set_cursor``, ``redrive`` and ``discard`` also arrive as signals: valid ones apply, invalid
    ones change nothing and are recorded in ``status`` (a signal has no caller to tell)."""
    agent = await harness.workspace("agent")
    async with harness.worker():
        handle = await harness.start(agent)
        await handle.signal("configure", ConfigureInput(changes={"max_concurrency": 7}))
        await handle.signal("configure", ConfigureInput(changes={"max_concurrency": 0}))
        await handle.signal("set_cursor", SetCursorInput(row_id="not-a-uuid"))
        await handle.signal("redrive", DeadLetterSelection(row_id=str(uuid.uuid4())))
        await handle.signal("set_cursor", SetCursorInput(row_id=str(uuid.uuid4())))  # a row the inbox does not hold
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: len(s.warnings) >= 4), message="four rejections"
        )
    assert status.settings.max_concurrency == 7
    rejected = " ".join(status.warnings)
    assert "signal configure rejected" in rejected and "signal redrive rejected" in rejected
    assert rejected.count("signal set_cursor rejected") == 2 and "not in this workspace's inbox" in rejected
    assert status.phase == "connected"
