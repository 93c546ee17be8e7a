"""ConnectWorkflow's failure policy and lifecycle with fake activities and skipped time: the 180 s ``blocked`` and
900 s ``gone`` waits, a backend outage's probe ladder, drain and continue-as-new, each in well under a second."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError

import workflows.connect as connect_module
from activities.errors import ErrorType
from activities.messages import PollResult
from tests.workflows.conftest import World, row
from workflows.connect import ConnectWorkflow
from workflows.messages import ConnectInput, ConnectResult, ConnectSettings, StatusResult
from workflows.outage import PROBE_LADDER_S

WS = "11111111-1111-4111-8111-111111111111"


async def start(world: World, **settings: Any) -> WorkflowHandle[ConnectWorkflow, ConnectResult]:
    input = ConnectInput(workspace_id=WS, platform_url="http://platform.test", settings=ConnectSettings(**settings))
    world.workflow_ids.append(f"connect-{world.task_queue}")
    return await world.client.start_workflow(
        ConnectWorkflow.run, input, id=f"connect-{world.task_queue}", task_queue=world.task_queue
    )


async def until(
    world: World,
    handle: WorkflowHandle[Any, Any],
    predicate: Callable[[StatusResult], bool],
    *,
    step: timedelta = timedelta(seconds=1),
    steps: int = 200,
) -> StatusResult:
    """Query ``status`` (of the latest run) after each ``step`` of skipped time until ``predicate`` holds."""
    latest = world.client.get_workflow_handle_for(ConnectWorkflow.run, handle.id)
    status = await latest.query(ConnectWorkflow.status)
    for _ in range(steps):
        if predicate(status):
            return status
        await world.env.sleep(step)
        status = await latest.query(ConnectWorkflow.status)
    raise AssertionError(f"condition never held; last status: {status}")


async def test_connect_register_refused_blocked_then_recovers_after_blocked_retry(world: World) -> None:
    """An auth failure on register blocks (no busy retry); 180 s later the next register succeeds."""
    world.fake.register_errors.append(ApplicationError("register: HTTP 401", type=ErrorType.AUTH, non_retryable=True))
    handle = await start(world)
    blocked = await until(world, handle, lambda s: s.phase == "blocked")
    assert blocked.blocked_reason == "register: HTTP 401"
    connected = await until(world, handle, lambda s: s.phase == "connected", step=timedelta(seconds=30))
    assert connected.blocked_reason is None and not world.fake.register_errors


async def test_connect_workspace_gone_waits_gone_retry_then_connects(world: World) -> None:
    world.fake.register_errors.append(ApplicationError("register: HTTP 404", type=ErrorType.GONE, non_retryable=True))
    handle = await start(world)
    gone = await until(world, handle, lambda s: s.phase == "gone")
    assert gone.blocked_reason is not None and "workspace gone" in gone.blocked_reason
    await until(world, handle, lambda s: s.phase == "connected", step=timedelta(minutes=2))


async def test_connect_token_missing_everywhere_blocks_with_the_hand_off_reason(world: World) -> None:
    reason = "no token for workspace x: add it to MOLECULE_TOKENS_FILE (this worker serves task queue q)"
    world.fake.register_errors.append(ApplicationError(reason, type=ErrorType.TOKEN_MISSING, non_retryable=True))
    handle = await start(world)
    blocked = await until(world, handle, lambda s: s.phase == "blocked")
    assert blocked.blocked_reason == f"register: {reason}"


async def test_connect_backend_down_holds_messages_probes_on_the_ladder_then_answers_each_once(world: World) -> None:
    """Messages of three conversations fail in a row: held, no dead letter, no error reply; the probe climbs the
    ladder; once the backend answers every message is answered exactly once."""
    down = {"on": True}
    world.fake.failing = lambda input: down["on"]
    world.fake.batches.append(PollResult(rows=[row(1, lane="a"), row(2, lane="b"), row(3, lane="c")], polls=1))
    handle = await start(world, dispatch_as="activity")
    status = await until(world, handle, lambda s: s.phase == "backend_down")
    assert status.outage is not None and len(status.outage.held) >= 2
    status = await until(
        world, handle, lambda s: s.outage is not None and s.outage.probes >= 3, step=timedelta(seconds=5)
    )
    assert status.dead_letters == [] and world.fake.replies == []
    assert status.pending == 3
    down["on"] = False
    status = await until(world, handle, lambda s: s.counters["replied"] == 3, step=timedelta(seconds=30))
    assert status.phase == "connected" and status.dead_letters == [] and status.outage is None
    assert sorted(r.row.row_id for r in world.fake.replies) == sorted(row(n).row_id for n in (1, 2, 3))
    # Probes were spaced by the ladder, not hammered.
    assert len(world.fake.dispatched) < 3 + 2 * len(PROBE_LADDER_S) + 6


async def test_connect_poison_message_among_good_ones_is_dead_lettered_after_max_attempts(world: World) -> None:
    world.fake.failing = lambda input: input.row.row_id == row(2).row_id
    world.fake.batches.append(
        PollResult(rows=[row(1, lane="a"), row(2, lane="b"), row(3, lane="a"), row(4, lane="c")], polls=1)
    )
    handle = await start(world, dispatch_as="activity", max_attempts=3, max_concurrency=1)
    status = await until(world, handle, lambda s: s.pending == 0 and s.counters["dead_lettered"] == 1)
    assert [d.row_id for d in status.dead_letters] == [row(2).row_id] and status.dead_letters[0].attempts == 3
    assert status.counters["replied"] == 3 and status.outage is None
    assert world.fake.dispatched.count(row(2).row_id) == 3
    [error_reply] = [r for r in world.fake.replies if r.is_error]
    assert "reference: " + row(2).row_id in error_reply.parts[0].text  # type: ignore[union-attr]


async def test_connect_dispatch_on_a_worker_without_the_token_is_handed_on_not_blocked(world: World) -> None:
    """A regular dispatch refused by a worker without the token is tried again soon (by another worker, in a
    fleet); only when none takes it for three minutes does the connector block."""
    refusals = {"left": 3}

    def no_token(input: object) -> bool:
        refusals["left"] -= 1
        return refusals["left"] >= 0

    world.fake.no_token = no_token
    world.fake.batches.append(PollResult(rows=[row(1)], polls=1))
    handle = await start(world, dispatch_as="activity")
    status = await until(world, handle, lambda s: s.counters["replied"] == 1)
    assert status.blocked_reason is None and world.fake.dispatched.count(row(1).row_id) == 4


async def test_connect_dispatch_no_worker_holds_the_token_blocks_after_three_minutes(world: World) -> None:
    world.fake.no_token = lambda input: True
    world.fake.batches.append(PollResult(rows=[row(1)], polls=1))
    handle = await start(world, dispatch_as="activity")
    blocked = await until(world, handle, lambda s: s.phase == "blocked", step=timedelta(seconds=20))
    assert blocked.blocked_reason is not None and "no token" in blocked.blocked_reason
    assert 3 < world.fake.dispatched.count(row(1).row_id) < 20  # backing off, not hammering


# Last: these sessions block instead of waiting for a delayed retry, and the shared test server's clock stops
# skipping for the tests after them.


async def test_connect_drain_delivers_what_was_fetched_and_returns_its_state(world: World) -> None:
    world.fake.idle_blocks = True
    world.fake.batches.append(PollResult(rows=[row(1), row(2)], polls=1))
    handle = await start(world, dispatch_as="activity")
    await until(world, handle, lambda s: s.counters["received"] == 2)
    await handle.execute_update(ConnectWorkflow.drain)
    result = await handle.result()
    assert result.phase == "stopped" and result.counters["replied"] == 2
    assert result.state is not None and result.state.commit_cursor is not None
    assert result.state.commit_cursor.row_id == row(2).row_id and not result.state.pending


async def test_connect_continue_as_new_carries_cursor_and_pending_messages(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the history limit the run continues as new with its state; nothing fetched is lost or repeated."""
    monkeypatch.setattr(connect_module, "HISTORY_LENGTH_LIMIT", 40)
    world.fake.idle_blocks = True
    # One batch: the idle session that follows never completes by itself, so continue-as-new cancels a running one.
    world.fake.batches.append(PollResult(rows=[row(n, lane=f"l{n}") for n in range(1, 9)], polls=1))
    handle = await start(world, dispatch_as="activity")
    status = await until(world, handle, lambda s: s.counters["replied"] == 8, step=timedelta(milliseconds=100))
    assert status.counters["continued_as_new"] >= 1
    assert status.commit_cursor is not None and status.commit_cursor.row_id == row(8).row_id
    assert sorted(r.row.row_id for r in world.fake.replies) == sorted(row(n).row_id for n in range(1, 9))
