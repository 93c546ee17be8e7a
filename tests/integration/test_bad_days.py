"""Bad days: hostile inbox rows, a hung or lying platform, a backend outage, echoed secrets, a spinning cursor.

Each test meets one failure the way a user would, on the session's real Temporal dev server and a real devplatform
(faults from ``POST /admin/faults``; rows the platform's own routes refuse, from ``POST /admin/workspaces/{id}/rows``),
and checks what docs/protocol.md §8 promises: one failing message never stops the others, nothing is lost, nothing is
answered twice, no secret is stored. The crash between a stored notify and its answer is in
``test_bad_days_crash.py``; dead letters by the hundred in ``test_dead_letters.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from activities.messages import BackendSpec
from devplatform.client import CreatedWorkspace, text_message
from tests.helpers import Harness, reply_message, reply_text, wait_until
from worker import control
from workflows.messages import StatusResult

# --- helpers ------------------------------------------------------------------------------------------------------


async def _status_when(harness: Harness, workspace_id: str, check: Callable[[StatusResult], Any]) -> Any:
    status = await harness.status(workspace_id)
    return status if check(status) else None


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    return reply_message(row).get("metadata") or {}


def _is_error(row: dict[str, Any]) -> bool:
    return bool(_metadata(row).get("error"))


async def _good_replies(harness: Harness, peer: CreatedWorkspace, agent: CreatedWorkspace) -> Counter[str]:
    """Non-error replies in the peer's inbox, counted per ``in_reply_to`` messageId (a platform-folded duplicate
    send counts too: ``duplicates``)."""
    counts: Counter[str] = Counter()
    for row in await harness.replies_to(peer.id, agent.id):
        if not _is_error(row):
            counts[_metadata(row).get("in_reply_to", "?")] += 1 + int(row.get("duplicates") or 0)
    return counts


async def _all_answered(harness: Harness, peer: CreatedWorkspace, agent: CreatedWorkspace, ids: list[str]) -> Any:
    counts = await _good_replies(harness, peer, agent)
    return counts if all(counts[m] for m in ids) else None


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _recording_backend(log: Path, body: str = "cat") -> BackendSpec:
    """An exec backend that appends the messageId of every run to ``log``, then runs ``body`` (a shell snippet)."""
    script = f'echo "$MOLECULE_MESSAGE_ID" >> {shlex.quote(str(log))}; {body}'
    return BackendSpec(name="exec", options={"cmd": f"sh -c {shlex.quote(script)}"})


async def _inbox_row_id(harness: Harness, workspace_id: str, message_id: str) -> str:
    [row] = [r for r in await harness.admin.rows(workspace_id) if r.get("message_id") == message_id]
    return str(row["id"])


# --- 1. hostile rows, lasting poll failures -----------------------------------------------------------------------

DEPTH = 1500


def _deep_body() -> str:
    """A well-formed ``message/send`` whose metadata nests 1,500 levels deep (past orjson's 1,024)."""
    nested = "[" * DEPTH + "]" * DEPTH
    return (
        '{"jsonrpc":"2.0","id":"r-deep","method":"message/send","params":{"message":{"role":"user",'
        '"messageId":"m-deep","contextId":"c-deep","parts":[{"kind":"text","text":"deep"}],'
        f'"metadata":{{"x":{nested}}}}}}}}}'
    )


def _surrogate_body() -> str:
    r"""A ``message/send`` whose text holds a lone surrogate escape ``"\ud800"`` (valid to Python, not to orjson)."""
    body = json.dumps(text_message("half a pair: \ud800", context_id="c-surrogate", message_id="m-surrogate"))
    assert "\\ud800" in body
    return body


async def test_hostile_rows_mid_batch_dead_lettered_with_reason_later_messages_answered(harness: Harness) -> None:
    """A body nested 1,500 deep and one with a lone surrogate, between two good messages in one inbox batch: the
    good ones are answered, each hostile row is dead-lettered at the parse stage with its reason and its sender is
    told (with the row as reference), and the connector stays ``connected``."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker():
        await harness.start(agent)
        await control.pause_connector(harness.client, agent.id)  # all four rows come in one inbox read
        await harness.admin.send_text(agent.id, "before", sender=peer, context_id="c-1", message_id="m-before")
        deep = await harness.admin.insert_raw_row(agent.id, request_body_json=_deep_body(), source_id=peer.id)
        surrogate = await harness.admin.insert_raw_row(agent.id, request_body_json=_surrogate_body(), source_id=peer.id)
        await harness.admin.send_text(agent.id, "after", sender=peer, context_id="c-2", message_id="m-after")
        await control.resume_connector(harness.client, agent.id)

        good = await wait_until(
            lambda: _all_answered(harness, peer, agent, ["m-before", "m-after"]), message="the good messages answered"
        )
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: len(s.dead_letters) == 2 and not s.pending),
            message="both hostile rows dead-lettered",
        )
        errors = await wait_until(lambda: _error_replies(harness, peer, agent, 2), message="both senders told")

    assert good == {"m-before": 1, "m-after": 1}
    letters = {d.row_id: d for d in status.dead_letters}
    assert set(letters) == {deep, surrogate}
    for letter in letters.values():
        assert letter.stage == "parse"
        assert letter.source_id == peer.id
        assert "request_body" in letter.error and "cannot be decoded" in letter.error, letter.error
    assert status.phase == "connected" and status.trouble is None
    assert status.commit_cursor is not None
    assert status.commit_cursor.row_id == await _inbox_row_id(harness, agent.id, "m-after")
    assert sorted(_metadata(r)["activity_id"] for r in errors) == sorted([deep, surrogate])
    for row in errors:
        assert _metadata(row)["activity_id"] in reply_text(row)  # the reference the operator looks up


async def _error_replies(harness: Harness, peer: CreatedWorkspace, agent: CreatedWorkspace, n: int) -> Any:
    rows = [r for r in await harness.replies_to(peer.id, agent.id) if _is_error(r)]
    return rows if len(rows) >= n else None


@pytest.mark.slow
async def test_inbox_503_for_over_a_minute_shows_degraded_with_trouble_then_clears(harness: Harness) -> None:
    """The platform answers 503 to every inbox read for over a minute (SessionInput.trouble_after_s, 60 s; no
    setting shortens it): ``status`` shows phase ``degraded`` with the operation, the error, since when and the
    attempts; once the platform answers again the phase is ``connected``, the trouble gone, and a message sent
    meanwhile is answered."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker():
        await harness.start(agent)
        started = datetime.now(UTC)
        await harness.admin.add_fault(f"/workspaces/{agent.id}/activity", method="GET", status=503, count=None)
        await harness.admin.send_text(agent.id, "during", sender=peer, context_id="c", message_id="m-during")
        degraded = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.phase == "degraded"),
            timeout=100,
            interval=0.5,
            message="phase degraded",
        )
        await harness.admin.clear_faults()
        answered = await wait_until(
            lambda: _all_answered(harness, peer, agent, ["m-during"]), timeout=90, message="the message answered"
        )
        recovered = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.phase == "connected" and s.trouble is None),
            timeout=60,
            message="trouble cleared",
        )

    trouble = degraded.trouble
    assert trouble is not None
    assert trouble.operation == "poll"
    assert "503" in trouble.error
    assert started - timedelta(seconds=5) <= trouble.since <= started + timedelta(seconds=10)
    assert trouble.attempts >= 3
    assert answered == {"m-during": 1}
    assert recovered.counters["replied"] == 1


# --- 2. a hung platform during replies ----------------------------------------------------------------------------


@pytest.mark.parametrize(("phase", "rounds"), [("after", 2), ("before", 1)])
async def test_platform_hung_on_replies_backend_runs_once_each_sender_one_good_reply(
    harness: Harness, tmp_path: Path, phase: str, rounds: int
) -> None:
    """Replies hang (12 s per request, longer than the dispatch heartbeat timeout and the in-dispatch reply wait)
    while four conversations are answered: each message runs the backend once, none is dead-lettered, and every
    sender gets exactly one good reply once the platform answers. ``after``: each reply is stored, then answered
    late, and so is its first retry; ``before``: each reply stalls before the platform stores it."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    runs = tmp_path / "runs"
    ids = [f"m-hung-{n}" for n in range(4)]
    async with harness.worker():
        await harness.start(agent, _recording_backend(runs), max_concurrency=4)
        # Reply requests hang until the fault is used up: the sends made with the dispatches (and, for two rounds,
        # their first retries by the reply activity).
        await harness.admin.add_fault(
            f"/workspaces/{peer.id}/a2a", method="POST", latency_s=12, count=rounds * len(ids), phase=phase
        )
        for n, message_id in enumerate(ids):
            await harness.admin.send_text(
                agent.id, f"hung {n}", sender=peer, context_id=f"c-{n}", message_id=message_id
            )
        await wait_until(lambda: len(_lines(runs)) >= len(ids), message="every backend run")
        counts = await wait_until(
            lambda: _all_answered(harness, peer, agent, ids), timeout=120, interval=0.5, message="every reply"
        )
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["replied"] == len(ids) and not s.pending),
            timeout=60,
            message="all settled",
        )
        replies = await harness.replies_to(peer.id, agent.id)

    assert sorted(_lines(runs)) == sorted(ids), "a message ran the backend more than once"
    assert counts == {m: 1 for m in ids}
    assert [r for r in replies if _is_error(r)] == []
    assert status.dead_letters == [] and status.counters["dead_lettered"] == 0
    for row in replies:
        assert reply_text(row) == f"hung {ids.index(_metadata(row)['in_reply_to'])}"


# --- 3b. a platform that answers notify late ----------------------------------------------------------------------


async def test_canvas_notify_answered_late_sent_once_per_message(harness: Harness, tmp_path: Path) -> None:
    """The platform stores each canvas reply (notify) but answers 12 s late, past the in-dispatch reply wait and
    the dispatch heartbeat timeout: every canvas message (two canvas conversations, answered in parallel) gets
    exactly one notify, and the backend ran once each."""
    agent = await harness.workspace("agent")
    runs = tmp_path / "runs"
    texts = ["first canvas question", "second canvas question"]
    async with harness.worker():
        await harness.start(agent, _recording_backend(runs, "tr a-z A-Z"))
        await harness.admin.add_fault(
            f"/workspaces/{agent.id}/notify", method="POST", latency_s=12, count=len(texts), phase="after"
        )
        for n, text in enumerate(texts):
            await harness.admin.send_text(agent.id, text, context_id=f"canvas-chat-{n}")
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["replied"] == len(texts) and not s.pending),
            timeout=120,
            interval=0.5,
            message="both canvas messages settled",
        )
        notifies = await harness.notifications(agent.id)

    answers = Counter(row["response_body"]["result"] for row in notifies)
    assert answers == Counter(text.upper() for text in texts), "a canvas reply was sent more than once"
    assert len(_lines(runs)) == len(texts)
    assert status.dead_letters == []


async def test_canvas_same_question_twice_answered_twice(harness: Harness) -> None:
    """Looking for a notify's echo must not swallow a real second reply: a person who asks the same thing twice on
    the canvas (the in-process echo backend, which looks for the echo before every notify) gets two answers."""
    agent = await harness.workspace("agent")
    async with harness.worker():
        await harness.start(agent)
        await harness.admin.send_text(agent.id, "are you there?")
        await wait_until(lambda: harness.notifications(agent.id), message="the first answer")
        await harness.admin.send_text(agent.id, "are you there?")
        await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["replied"] == 2 and not s.pending),
            message="both settled",
        )
        notifies = await harness.notifications(agent.id)

    assert [row["response_body"]["result"] for row in notifies] == ["echo: are you there?"] * 2


# --- 6. a token echoed by the platform ----------------------------------------------------------------------------


async def test_401_body_echoing_the_token_stored_nowhere(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """The platform refuses the inbox read and the heartbeat with 401, and the answer repeats the Authorization
    header (and the bare token): the connector shows ``blocked`` with the refusal, but the token is in no history
    payload (codec off), no ``status`` and no log record; after the 401s it delivers again."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    token = agent.token
    assert token is not None
    echo = {
        "error": "invalid workspace auth token",
        "received_headers": {"Authorization": f"Bearer {token}"},
        "hint": f"token {token} was revoked",
    }
    caplog.set_level(logging.INFO)
    async with harness.worker():
        handle: WorkflowHandle[Any, Any] = await harness.start(agent)
        for path in (f"/workspaces/{agent.id}/activity", "/registry/heartbeat"):
            await harness.admin.add_fault(path, status=401, count=None, body=echo)
        blocked = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.phase == "blocked"), message="blocked by the 401"
        )
        # Let the refusals repeat for a few blocked retries before the platform accepts the token again.
        await wait_until(_hits_at_least(harness, 4), message="several refused requests")
        await harness.admin.clear_faults()
        await harness.admin.send_text(agent.id, "after the 401s", sender=peer, context_id="c", message_id="m-401")
        await wait_until(lambda: _all_answered(harness, peer, agent, ["m-401"]), message="delivery after the 401s")
        recovered = await harness.status(agent.id)
        history = await handle.fetch_history()

    assert "401" in (blocked.blocked_reason or "")
    for status in (blocked, recovered):
        assert token not in status.model_dump_json()
    raw = b"".join(event.SerializeToString() for event in history.events)
    assert b"HTTP 401" in raw  # the refusal itself is in history ...
    assert token.encode() not in raw  # ... without the token
    assert token not in history.to_json()
    logged = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert any("401" in r.getMessage() for r in logged)
    leaks = [r.getMessage() for r in logged if token in r.getMessage() or token in str(r.__dict__)]
    assert leaks == []


def _hits_at_least(harness: Harness, n: int) -> Callable[[], Any]:
    async def check() -> bool:
        return sum(f["hits"] for f in await harness.admin.faults()) >= n

    return check


# --- 7. a non-UUID row id at the head of the inbox ----------------------------------------------------------------

WINDOW_S = 6.0
"""How long inbox reads are counted while the non-UUID row is the newest."""


async def test_non_uuid_row_at_inbox_head_skipped_once_no_spin(harness: Harness) -> None:
    """The newest inbox row has id ``row-7`` (the platform refuses it as a cursor): it is skipped once, the inbox
    is read about once per ``poll_interval_s`` while it is the newest (not 8 times a second), history hardly grows,
    and a later message is still answered."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    poll_interval_s = 1.0
    async with harness.worker():
        handle = await harness.start(agent, poll_interval_s=poll_interval_s)
        # A pass-through fault that only counts the inbox reads.
        await harness.admin.add_fault(f"/workspaces/{agent.id}/activity", method="GET", count=None)
        events_before = len((await handle.fetch_history()).events)
        window_start = time.monotonic()
        odd = await harness.admin.insert_raw_row(
            agent.id,
            id="row-7",
            request_body_json=json.dumps(text_message("odd id", context_id="c-odd", message_id="m-odd")),
            source_id=peer.id,
        )
        await asyncio.sleep(WINDOW_S)  # a rate needs a window: count what happens in it
        reads = (await harness.admin.faults())[0]["hits"]
        elapsed = time.monotonic() - window_start
        events_after = len((await handle.fetch_history()).events)
        await harness.admin.clear_faults()
        # Idle polling backs off from poll_interval_s, never below it; allow for a read at each end of the window.
        assert reads <= elapsed / poll_interval_s + 2, f"{reads} inbox reads in {elapsed:.1f} s"
        assert events_after - events_before <= 20, f"{events_after - events_before} history events in {elapsed:.1f} s"

        await harness.admin.send_text(agent.id, "after", sender=peer, context_id="c-after", message_id="m-after")
        await wait_until(lambda: _all_answered(harness, peer, agent, ["m-after"]), message="a later message answered")
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["replied"] == 1 and not s.pending),
            message="settled",
        )

    assert odd == "row-7"
    assert status.counters["skipped"] == 1
    assert status.counters["received"] == 2
    assert status.dead_letters == []
    assert status.commit_cursor is not None and status.commit_cursor.row_id != "row-7"
    assert await _good_replies(harness, peer, agent) == {"m-after": 1}


# --- 8. set_cursor to an unknown row; 410 recovery after a rewind -------------------------------------------------


async def test_set_cursor_unknown_row_refused_with_clear_message_nothing_redelivered(harness: Harness) -> None:
    """``cursor --set <a UUID the inbox does not hold>`` is refused with a message naming the row (the platform is
    asked first); the cursor stays, and none of the old rows skipped at cold start is delivered."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    old = [f"m-old-{n}" for n in range(5)]
    for n, message_id in enumerate(old):
        await harness.admin.send_text(agent.id, f"old {n}", sender=peer, context_id="c-old", message_id=message_id)
    unknown = str(uuid.uuid4())
    async with harness.worker():
        await harness.start(agent)  # cold start "latest": the old rows are not delivered
        before = await harness.status(agent.id)
        with pytest.raises(control.ConnectorError) as refused:
            await control.set_cursor(harness.client, agent.id, unknown)
        await harness.admin.send_text(agent.id, "new", sender=peer, context_id="c-new", message_id="m-new")
        await wait_until(lambda: _all_answered(harness, peer, agent, ["m-new"]), message="the new message answered")
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["replied"] == 1 and not s.pending),
            message="settled",
        )

    message = str(refused.value)
    assert unknown in message and "not in this workspace's inbox" in message, message
    assert "\n" not in message
    assert before.commit_cursor is not None
    assert status.counters["cursor_resets"] == 0
    assert await _good_replies(harness, peer, agent) == {"m-new": 1}


async def test_410_after_rewind_never_redelivers_rows_older_than_last_settled(harness: Harness) -> None:
    """An operator rewinds the cursor to an old row that retention then deletes: the next read gets 410 and the
    recovery re-reads the newest rows, but delivers none older than the last settled message; new mail flows."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    now = datetime.now(UTC)
    anchor = await harness.admin.insert_raw_row(
        agent.id,
        request_body_json=json.dumps(text_message("anchor", context_id="c-old", message_id="m-anchor")),
        source_id=peer.id,
        created_at=now - timedelta(hours=2),
    )
    old = [f"m-old-{n}" for n in range(5)]
    for n, message_id in enumerate(old):
        await harness.admin.insert_raw_row(
            agent.id,
            request_body_json=json.dumps(text_message(f"old {n}", context_id="c-old", message_id=message_id)),
            source_id=peer.id,
            created_at=now - timedelta(hours=1, seconds=-n),
        )
    async with harness.worker():
        await harness.start(agent)  # cold start "latest": anchor and old rows are not delivered
        await harness.admin.send_text(agent.id, "one", sender=peer, context_id="c-new", message_id="m-1")
        await wait_until(lambda: _all_answered(harness, peer, agent, ["m-1"]), message="m-1 answered")
        await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["replied"] == 1 and not s.pending),
            message="m-1 settled",
        )
        await control.pause_connector(harness.client, agent.id)
        await control.set_cursor(harness.client, agent.id, anchor)  # a row the inbox holds: accepted
        assert await harness.admin.prune(workspace_id=agent.id, older_than_s=90 * 60) == 1  # only the anchor
        await control.resume_connector(harness.client, agent.id)
        await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["cursor_resets"] >= 1),
            message="the 410 recovery",
        )
        await harness.admin.send_text(agent.id, "two", sender=peer, context_id="c-new", message_id="m-2")
        await wait_until(lambda: _all_answered(harness, peer, agent, ["m-2"]), message="m-2 answered")
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["replied"] >= 2 and not s.pending),
            message="m-2 settled",
        )

    assert await _good_replies(harness, peer, agent) == {"m-1": 1, "m-2": 1}, "an old row was delivered"
    assert status.dead_letters == []


# --- 9. backend outage; a poison message among good ones ----------------------------------------------------------


async def test_backend_down_for_a_while_nothing_dead_lettered_all_answered_once_after(
    harness: Harness, tmp_path: Path
) -> None:
    """The agent behind the exec backend is down (it fails until a flag file appears) while twelve messages in four
    conversations arrive: the connector goes ``backend_down`` (``status.outage`` set), dead-letters nothing and
    sends no error reply; when the agent is back every message is answered exactly once."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    runs, up = tmp_path / "runs", tmp_path / "agent-up"
    backend = _recording_backend(
        runs, f"test -f {shlex.quote(str(up))} || {{ echo agent restarting >&2; exit 7; }}; cat"
    )
    ids = [f"m-{c}-{n}" for n in range(3) for c in range(4)]
    async with harness.worker():
        await harness.start(agent, backend, max_concurrency=4, max_attempts=3, heartbeat_interval_s=1.0)
        for message_id in ids:
            context = message_id.split("-")[1]
            await harness.admin.send_text(
                agent.id, message_id, sender=peer, context_id=f"c-{context}", message_id=message_id
            )
        down = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.phase == "backend_down" or s.dead_letters),
            message="backend_down (or a dead letter)",
        )
        assert down.dead_letters == [] and down.phase == "backend_down", "dead-lettered during the outage"
        # The platform learns it from the heartbeat's error_rate, and shows the workspace degraded.
        seen = await wait_until(lambda: _platform_degraded(harness, agent.id), message="platform shows degraded")
        # The agent stays down through a probe (the ladder: 1 s, 5 s, 15 s ...).
        await wait_until(lambda: _probes_at_least(harness, agent.id, 1), timeout=30, message="a failed probe")
        while_down = await harness.status(agent.id)
        up.touch()
        counts = await wait_until(
            lambda: _all_answered(harness, peer, agent, ids), timeout=60, message="every message answered"
        )
        status = await wait_until(
            lambda: _status_when(
                harness,
                agent.id,
                lambda s: s.counters["replied"] == len(ids) and not s.pending and s.phase == "connected",
            ),
            message="all settled, connected",
        )
        replies = await harness.replies_to(peer.id, agent.id)

    assert down.outage is not None and "status 7" in down.outage.last_error
    assert seen["error_rate"] == 1.0
    assert while_down.phase == "backend_down" and while_down.dead_letters == []
    assert counts == {m: 1 for m in ids}
    assert [r for r in replies if _is_error(r)] == [], "a sender was told its message failed during the outage"
    assert status.dead_letters == [] and status.counters["dead_lettered"] == 0
    assert status.outage is None


async def _platform_degraded(harness: Harness, workspace_id: str) -> Any:
    workspace = await harness.admin.workspace(workspace_id)
    return workspace if workspace["status"] == "degraded" else None


async def _probes_at_least(harness: Harness, workspace_id: str, n: int) -> bool:
    outage = (await harness.status(workspace_id)).outage
    return outage is not None and outage.probes >= n


async def test_poison_message_among_good_ones_still_dead_lettered_after_max_attempts(
    harness: Harness, tmp_path: Path
) -> None:
    """One message the agent always fails on, while messages of other conversations succeed: it is not an outage;
    the message is tried ``max_attempts`` times, dead-lettered and its sender told, the others answered once."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    runs = tmp_path / "runs"
    backend = _recording_backend(runs, 'x=$(cat); case "$x" in *poison*) exit 3;; esac; printf %s "$x"')
    good = [f"m-good-{n}" for n in range(6)]
    async with harness.worker():
        await harness.start(agent, backend, max_concurrency=2, max_attempts=3)
        await harness.admin.send_text(agent.id, "poison", sender=peer, context_id="c-bad", message_id="m-poison")
        for n, message_id in enumerate(good):
            await harness.admin.send_text(agent.id, message_id, sender=peer, context_id=f"c-{n}", message_id=message_id)
        counts = await wait_until(lambda: _all_answered(harness, peer, agent, good), message="the good ones answered")
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.dead_letters and not s.pending), message="dead letter"
        )
        errors = await wait_until(lambda: _error_replies(harness, peer, agent, 1), message="the sender told")

    [letter] = status.dead_letters
    assert (letter.message_id, letter.stage, letter.attempts) == ("m-poison", "dispatch", 3)
    assert counts == {m: 1 for m in good}
    assert [_metadata(r).get("in_reply_to") for r in errors] == ["m-poison"]
    assert Counter(_lines(runs))["m-poison"] == 3


# --- 11. error replies hold no local details ----------------------------------------------------------------------


async def test_error_reply_to_sender_generic_with_reference_details_only_in_status(
    harness: Harness, tmp_path: Path
) -> None:
    """A failing exec backend prints its local path, command and a stack on stderr: the sender's error reply says
    the message could not be processed and names the row, nothing more; ``status`` keeps the details."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    secret_dir = tmp_path / "opt" / "private-agent"
    secret_dir.mkdir(parents=True)
    script = secret_dir / "run-agent.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "Traceback (most recent call last): File \\"{secret_dir}/agent.py\\", line 7" >&2\n'
        f'echo "error: cannot open {secret_dir}/model.bin (HOME=$HOME)" >&2\n'
        "exit 4\n"
    )
    script.chmod(0o755)
    backend = BackendSpec(name="exec", options={"cmd": str(script)})
    async with harness.worker():
        await harness.start(agent, backend, max_attempts=2)
        await harness.admin.send_text(agent.id, "hello", sender=peer, context_id="c", message_id="m-fail")
        [error] = await wait_until(lambda: _error_replies(harness, peer, agent, 1), message="the error reply")
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.dead_letters and not s.pending), message="dead letter"
        )

    row_id = await _inbox_row_id(harness, agent.id, "m-fail")
    text = reply_text(error)
    for detail in (str(tmp_path), "private-agent", "run-agent", "Traceback", "model.bin", "HOME", "status 4", "/"):
        assert detail not in text.replace(row_id, ""), f"{detail!r} in the sender's error reply: {text!r}"
    assert row_id in text
    [letter] = status.dead_letters
    assert letter.row_id == row_id
    assert "model.bin" in letter.error and "status 4" in letter.error  # the operator still sees why
