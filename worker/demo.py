"""``molecule-connect demo``: the whole path on one machine, in under two minutes.

It starts an embedded Temporal dev server and a devplatform (both in a temporary directory, stopped at the end), a
worker, and a connected workspace with the ``echo`` backend; then a peer workspace sends an A2A v0.3 message and a
v0.2 ``content`` message, and a human sends one from the canvas. Each inbound message is printed with its reply, as
the platform stored them. Any failure raises (the CLI exits non-zero).
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.messages import BackendSpec
from devplatform.client import AsyncPlatformAdmin, text_message
from devplatform.server import RunningPlatform
from devplatform.settings import PlatformSettings
from worker.assemble import running_worker
from worker.control import connector_status, start_connector
from worker.devserver import ensure_embedded_server, stop_embedded_server
from workflows.messages import ConnectInput, ConnectSettings, StatusResult


def _text_of(message: dict[str, Any]) -> str:
    return " ".join(p.get("text", "") for p in message.get("parts", []) if p.get("kind") == "text")


async def _wait_for(check: Any, what: str, interval: float = 0.2) -> Any:
    while not (result := await check()):
        await asyncio.sleep(interval)
    return result


async def run_demo(timeout_s: float = 110.0) -> None:
    """Run the demo; return when every message has its reply.

    Args:
        timeout_s: Give up (``TimeoutError``) after this many seconds.

    Raises:
        TimeoutError: A reply did not arrive in time.
    """
    with tempfile.TemporaryDirectory(prefix="molecule-connect-demo-") as tmp:
        state_dir = Path(tmp)
        server = await ensure_embedded_server(state_dir)
        try:
            async with asyncio.timeout(timeout_s):
                await _demo(server.address, server.ui_url)
        finally:
            stop_embedded_server(state_dir)


async def _demo(address: str, ui_url: str | None) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    print(f"Temporal dev server {address}; Web UI {ui_url} (it stops when the demo ends)")
    settings = PlatformSettings(db_path=Path(tempfile.mkdtemp(prefix="devplatform-")) / "platform.db")
    with RunningPlatform(settings) as platform:
        print(f"devplatform on {platform.url}")
        async with AsyncPlatformAdmin(platform.url, admin_token=settings.admin_token) as admin:
            agent = await admin.create_workspace("demo-agent")
            peer = await admin.create_workspace("demo-peer")
            assert agent.token is not None
            tokens = {agent.id: agent.token}
            task_queue = f"molecule-connect-demo-{uuid.uuid4().hex[:8]}"
            async with running_worker(client, task_queue=task_queue, token_for=tokens.__getitem__):
                input = ConnectInput(
                    workspace_id=agent.id,
                    platform_url=platform.url,
                    backend=BackendSpec(name="echo"),
                    settings=ConnectSettings(poll_interval_s=0.25),
                )
                handle = await start_connector(client, input, task_queue=task_queue)
                print(f"workflow {handle.id} on task queue {task_queue}: connecting workspace {agent.id}")

                async def seeded() -> bool:
                    status = await connector_status(client, agent.id)
                    return status.phase == "connected" and status.seeded

                await _wait_for(seeded, "connected")
                print("connected (registered, heartbeating, polling)\n")

                await admin.send_message(
                    agent.id, text_message("Hello from the peer agent (A2A v0.3)", context_id="demo-chat"), sender=peer
                )
                await admin.send_message(
                    agent.id,
                    {"method": "message/send", "params": {"message": {"content": "And this one uses v0.2 'content'"}}},
                    sender=peer,
                )
                await admin.send_text(agent.id, "Hi, I am a human on the canvas")

                async def all_replied() -> list[dict[str, Any]] | None:
                    peer_rows = [r for r in await admin.rows(peer.id) if r.get("source_id") == agent.id]
                    notes = [r for r in await admin.rows(agent.id) if r.get("method") == "notify"]
                    return peer_rows + notes if len(peer_rows) >= 2 and notes else None

                replies = await _wait_for(all_replied, "replies")
                inbound = [r for r in await admin.rows(agent.id) if r.get("method") == "message/send"]
                for row in inbound:
                    message = row["request_body"]["params"]["message"]
                    sender = "peer  " if row.get("source_id") else "canvas"
                    print(f"{sender} → agent : {_text_of(message)}")
                    for reply in replies:
                        if row.get("source_id") and reply.get("method") == "message/send":
                            sent = reply["request_body"]["params"]["message"]
                            if sent.get("metadata", {}).get("in_reply_to") == message.get("messageId"):
                                print(
                                    f"agent  → peer  : {_text_of(sent)}  (role {sent['role']}, "
                                    f"contextId {sent.get('contextId')})"
                                )
                        elif not row.get("source_id") and reply.get("method") == "notify":
                            print(f"agent  → canvas: {reply['response_body']['result']}  (via /notify)")

                async def echo_skipped() -> StatusResult | None:
                    # Our /notify reply lands in our own inbox as a `notify` row: it must be skipped, not dispatched.
                    status = await connector_status(client, agent.id)
                    return status if status.counters["skipped"] >= 1 else None

                status = await _wait_for(echo_skipped, "notify echo skipped")
                print(
                    f"\nstatus: phase {status.phase}, replied {status.counters['replied']}, "
                    f"skipped {status.counters['skipped']} (own notify echo), "
                    f"cursor {status.commit_cursor.row_id if status.commit_cursor else '-'}"
                )
            # The worker is stopped first, so no activity completes against a terminated workflow.
            await handle.terminate("demo finished")
    print("demo finished OK")
