"""Record the real histories replayed in CI: ``python -m tests.replay.record_histories [OUT_DIR [SCENARIO...]]``.

Each scenario runs ConnectWorkflow on a fresh Temporal dev server against a real devplatform, ends it with
``drain`` (so the history is complete) and writes ``<scenario>.json`` in the format of
``temporal workflow show --output json``. Re-record after an intended, patched workflow change; never edit by hand.
Histories hold workspace ids and message text only: tokens never enter Temporal.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.messages import BackendSpec
from devplatform.client import AsyncPlatformAdmin
from devplatform.server import RunningPlatform
from devplatform.settings import PlatformSettings
from tests.helpers import Harness, new_task_queue, wait_until
from worker import control
from worker.devserver import find_temporal_binary
from worker.replay import history_json
from worker.settings import SEARCH_ATTRIBUTE_PHASE, SEARCH_ATTRIBUTE_WORKSPACE_ID

HISTORIES = Path(__file__).resolve().parent.parent / "histories"

Scenario = Callable[[Harness, Path], Awaitable[str]]


async def _replies(h: Harness, peer_id: str, agent_id: str, n: int) -> None:
    await wait_until(lambda: _count(h, peer_id, agent_id, n), timeout=60, message=f"{n} replies")


async def _count(h: Harness, peer_id: str, agent_id: str, n: int) -> bool:
    return len(await h.replies_to(peer_id, agent_id)) >= n


async def _drain(h: Harness, workspace_id: str) -> None:
    handle = h.client.get_workflow_handle(f"connect-{workspace_id}")
    await control.drain_connector(h.client, workspace_id)
    await handle.result()


async def plain_delivery(h: Harness, tmp: Path) -> str:
    agent, peer = await h.workspace("agent"), await h.workspace("peer")
    await h.start(agent)
    await h.admin.send_text(agent.id, "hello", sender=peer, context_id="c1")
    await h.admin.send_text(agent.id, "from the canvas")
    await _replies(h, peer.id, agent.id, 1)
    await wait_until(lambda: h.notifications(agent.id), message="notify")
    await _drain(h, agent.id)
    return agent.id


async def cursor_410_recovery(h: Harness, tmp: Path) -> str:
    agent, peer = await h.workspace("agent"), await h.workspace("peer")
    await h.start(agent)
    await h.admin.send_text(agent.id, "before prune", sender=peer, context_id="c1")
    await _replies(h, peer.id, agent.id, 1)
    await h.admin.prune(workspace_id=agent.id)
    await h.admin.send_text(agent.id, "after prune", sender=peer, context_id="c1")
    await _replies(h, peer.id, agent.id, 2)
    await _drain(h, agent.id)
    return agent.id


async def dead_letter_redrive(h: Harness, tmp: Path) -> str:
    agent, peer = await h.workspace("agent"), await h.workspace("peer")
    flag = tmp / "backend-fixed"
    backend = BackendSpec(name="exec", options={"cmd": f"sh -c 'test -f {flag} && cat || exit 3'"})
    await h.start(agent, backend, max_attempts=2)
    await h.admin.send_text(agent.id, "poison until fixed", sender=peer, context_id="c1")
    status = await wait_until(lambda: _dead(h, agent.id), timeout=60, message="dead letter")
    flag.touch()
    await control.redrive(h.client, agent.id, status.dead_letters[0].row_id)
    await _replies(h, peer.id, agent.id, 2)  # the error reply, then the real one
    await _drain(h, agent.id)
    return agent.id


async def _dead(h: Harness, workspace_id: str):
    status = await h.status(workspace_id)
    return status if status.dead_letters else None


async def pause_resume(h: Harness, tmp: Path) -> str:
    agent, peer = await h.workspace("agent"), await h.workspace("peer")
    await h.start(agent)
    await control.pause_connector(h.client, agent.id)
    await h.admin.send_text(agent.id, "sent while paused", sender=peer, context_id="c1")
    await control.resume_connector(h.client, agent.id)
    await _replies(h, peer.id, agent.id, 1)
    await _drain(h, agent.id)
    return agent.id


async def continue_as_new(h: Harness, tmp: Path) -> str:
    agent, peer = await h.workspace("agent"), await h.workspace("peer")
    await h.start(agent)
    for n in range(6):
        await h.admin.send_text(agent.id, f"message {n}", sender=peer, context_id=f"c{n % 2}")
    await _replies(h, peer.id, agent.id, 6)
    status = await h.status(agent.id)
    assert status.counters["continued_as_new"] >= 1, "expected at least one continue-as-new"
    return agent.id


async def local_dispatch(h: Harness, tmp: Path) -> str:
    """``echo`` under ``dispatch_as="auto"``: local activities that send the reply themselves."""
    agent, peer = await h.workspace("agent"), await h.workspace("peer")
    await h.start(agent)
    for n in range(3):
        await h.admin.send_text(agent.id, f"local {n}", sender=peer, context_id=f"c{n % 2}")
    await h.admin.send_text(agent.id, "from the canvas")
    await _replies(h, peer.id, agent.id, 3)
    await wait_until(lambda: h.notifications(agent.id), message="notify")
    await _drain(h, agent.id)
    return agent.id


async def reply_fallback(h: Harness, tmp: Path) -> str:
    """A regular ``dispatch`` whose own reply meets a 503, so the workflow resends it as a ``reply`` activity."""
    agent, peer = await h.workspace("agent"), await h.workspace("peer")
    await h.admin.add_fault(f"/workspaces/{peer.id}/a2a", method="POST", status=503, count=1)
    await h.start(agent, BackendSpec(name="exec", options={"cmd": "cat"}))
    await h.admin.send_text(agent.id, "reply me twice", sender=peer, context_id="c1")
    await h.admin.send_text(agent.id, "and once", sender=peer, context_id="c1")
    await _replies(h, peer.id, agent.id, 2)
    await _drain(h, agent.id)
    return agent.id


async def session_delivery(h: Harness, tmp: Path) -> str:
    """The ``session`` activity (heartbeats + inbox): peer and canvas messages, a pause and a resume, a cursor move."""
    agent, peer = await h.workspace("agent"), await h.workspace("peer")
    await h.start(agent, BackendSpec(name="exec", options={"cmd": "cat"}))
    await h.admin.send_text(agent.id, "hello", sender=peer, context_id="c1")
    await h.admin.send_text(agent.id, "from the canvas")
    await _replies(h, peer.id, agent.id, 1)
    await wait_until(lambda: h.notifications(agent.id), message="notify")
    await control.pause_connector(h.client, agent.id)
    await h.admin.send_text(agent.id, "sent while paused", sender=peer, context_id="c2")
    await control.resume_connector(h.client, agent.id)
    await _replies(h, peer.id, agent.id, 2)
    await control.set_cursor(h.client, agent.id, "latest")
    await wait_until(lambda: h._seeded(agent.id), message="reseeded at the newest row")
    await h.admin.send_text(agent.id, "after the move", sender=peer, context_id="c1")
    await _replies(h, peer.id, agent.id, 3)
    await _drain(h, agent.id)
    return agent.id


async def backend_outage(h: Harness, tmp: Path) -> str:
    """Two conversations fail in a row: ``backend_down``, held, probed; the backend comes back; one signal each."""
    agent, peer = await h.workspace("agent"), await h.workspace("peer")
    flag = tmp / "backend-up"
    backend = BackendSpec(name="exec", options={"cmd": f"sh -c 'test -f {flag} && cat || exit 3'"})
    await h.start(agent, backend, max_attempts=2)
    await h.admin.send_text(agent.id, "first", sender=peer, context_id="c1")
    await h.admin.send_text(agent.id, "second", sender=peer, context_id="c2")
    await wait_until(lambda: _down(h, agent.id), timeout=60, message="backend_down")
    flag.touch()
    await _replies(h, peer.id, agent.id, 2)
    handle = h.client.get_workflow_handle(f"connect-{agent.id}")
    await handle.signal("configure", {"changes": {"max_concurrency": 3}})
    await _drain(h, agent.id)
    return agent.id


async def session_continue_as_new(h: Harness, tmp: Path) -> str:
    """Continue-as-new on the session path (the server suggests it at 40 events): cursor and pending carried."""
    agent, peer = await h.workspace("agent"), await h.workspace("peer")
    await h.start(agent)
    for n in range(20):
        await h.admin.send_text(agent.id, f"message {n}", sender=peer, context_id=f"c{n % 3}")
    await _replies(h, peer.id, agent.id, 20)
    # The server's suggestion arrives with the next workflow task: one more message brings it.
    await h.admin.send_text(agent.id, "one more", sender=peer, context_id="c0")
    status = await wait_until(lambda: _continued(h, agent.id), timeout=60, message="a continue-as-new")
    assert status.counters["continued_as_new"] >= 1
    return agent.id


async def _continued(h: Harness, workspace_id: str):
    status = await h.status(workspace_id)
    return status if status.counters["continued_as_new"] >= 1 else None


async def _down(h: Harness, workspace_id: str) -> bool:
    return (await h.status(workspace_id)).phase == "backend_down"


SCENARIOS: dict[str, tuple[Scenario, list[str]]] = {
    "plain_delivery": (plain_delivery, []),
    "cursor_410_recovery": (cursor_410_recovery, []),
    "dead_letter_redrive": (dead_letter_redrive, []),
    "pause_resume": (pause_resume, []),
    "continue_as_new": (continue_as_new, ["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=40"]),
    "local_dispatch": (local_dispatch, []),
    "reply_fallback": (reply_fallback, []),
    "session_delivery": (session_delivery, []),
    "backend_outage": (backend_outage, []),
    "session_continue_as_new": (
        session_continue_as_new,
        ["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=40"],
    ),
}
"""The first five were recorded before ``reply-with-dispatch`` and ``local-dispatch``, and the first seven before
``session-and-outages`` (workflow.patched): keep them as they are, so the old paths keep replaying; record new
scenarios by name (``python -m tests.replay.record_histories tests/histories NAME``)."""


async def record(name: str, out_dir: Path) -> Path:
    scenario, server_args = SCENARIOS[name]
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(find_temporal_binary()),
        data_converter=pydantic_data_converter,
        search_attributes=[SEARCH_ATTRIBUTE_WORKSPACE_ID, SEARCH_ATTRIBUTE_PHASE],
        dev_server_extra_args=server_args,
        dev_server_log_level="error",
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = PlatformSettings(db_path=Path(tmp) / "platform.db", rate_limit_per_min=0)
            with RunningPlatform(settings) as platform:
                async with AsyncPlatformAdmin(platform.url, admin_token=settings.admin_token) as admin:
                    harness = Harness(client=env.client, task_queue=new_task_queue(), platform=platform, admin=admin)
                    async with harness.worker():
                        workspace_id = await scenario(harness, Path(tmp))
                    # The first run: for continue_as_new it ends with WorkflowExecutionContinuedAsNew.
                    handle = env.client.get_workflow_handle(f"connect-{workspace_id}")
                    first_run = (await handle.describe()).raw_description.workflow_execution_info
                    run_id = first_run.first_run_id or None
                    history = await env.client.get_workflow_handle(
                        f"connect-{workspace_id}", run_id=run_id
                    ).fetch_history()
    finally:
        await env.shutdown()
    path = out_dir / f"{name}.json"
    path.write_bytes(history_json(history) + b"\n")
    return path


async def main(argv: list[str]) -> None:
    """``[OUT_DIR [SCENARIO...]]``: every scenario by default, else the named ones."""
    out_dir = Path(argv[0]) if argv else HISTORIES
    names = argv[1:] or list(SCENARIOS)
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = await record(name, out_dir)
        print(f"recorded {path}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
