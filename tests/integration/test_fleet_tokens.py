"""A fleet task queue is a pool of interchangeable workers (docs/architecture.md §2.1): a worker that lacks a
workspace's token hands its activities on to one that holds it, and a connector warns when another one seems to be
serving its workspace already."""

from __future__ import annotations

import httpx
from temporalio.client import Client

from tests.helpers import Harness, reply_message, wait_until
from worker.assemble import running_worker


async def test_worker_without_the_token_hands_activities_to_the_one_holding_it(harness: Harness) -> None:
    """A worker lacking the agent's token starts first and is refused by its own token lookup; once a worker holding
    the token joins the task queue, it takes the activities over: every message is answered, never ``blocked``."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    asked: list[str] = []

    def lacking(workspace_id: str) -> str:
        asked.append(workspace_id)
        if workspace_id == agent.id:
            raise LookupError(f"no token for workspace {workspace_id}")
        return harness.tokens[workspace_id]

    other = await Client.connect(
        harness.client.service_client.config.target_host,
        namespace=harness.client.namespace,
        data_converter=harness.client.data_converter,
    )  # the SDK allows one worker per task queue and client in a process: the second "process" gets its own
    phases: set[str] = set()
    async with running_worker(other, task_queue=harness.task_queue, token_for=lacking):
        await harness.start(agent, wait_seeded=False)
        await wait_until(lambda: agent.id in asked, message="the lacking worker refused")
        async with harness.worker():
            # Cold start ``latest``: what arrives before the first read is not delivered; wait for it.
            await wait_until(lambda: harness._seeded(agent.id), message="cold start")
            for n in range(6):
                await harness.admin.send_text(
                    agent.id, f"m{n}", sender=peer, context_id=f"c{n % 3}", message_id=f"m{n}"
                )

            async def answered() -> bool:
                phases.add((await harness.status(agent.id)).phase)
                return len(await harness.replies_to(peer.id, agent.id)) == 6

            await wait_until(answered, timeout=90, message="six replies")
    replies = await harness.replies_to(peer.id, agent.id)
    assert sorted(reply_message(r)["metadata"]["in_reply_to"] for r in replies) == [f"m{n}" for n in range(6)]
    assert "blocked" not in phases


async def test_connector_warns_when_the_workspace_is_already_served_by_another(harness: Harness) -> None:
    """Before registering, a new connector reads its workspace: online with a fresh heartbeat it did not send means
    another connector (another namespace or cluster) may be serving it; ``status`` says so, delivery goes on."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with httpx.AsyncClient(base_url=harness.platform.url) as http:
        token = harness.tokens[agent.id]
        headers = {"Authorization": f"Bearer {token}", "Origin": harness.platform.url}
        card = {"name": "another connector", "description": "elsewhere", "version": "1"}
        body = {"id": agent.id, "delivery_mode": "poll", "agent_card": card}
        assert (await http.post("/registry/register", json=body, headers=headers)).status_code == 200
        beat = await http.post("/registry/heartbeat", json={"workspace_id": agent.id}, headers=headers)
        assert beat.status_code == 200
    async with harness.worker():
        await harness.start(agent)
        status = await harness.status(agent.id)
        await harness.admin.send_text(agent.id, "still served", sender=peer, context_id="c1")
        await wait_until(lambda: harness.replies_to(peer.id, agent.id), message="a reply")
    assert status.phase == "connected"
    assert any("another connector" in warning for warning in status.warnings), status.warnings
