"""Metrics: the Prometheus endpoint of a worker's runtime shows the connector counters moving after a delivery."""

from __future__ import annotations

import socket

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.helpers import Harness, wait_until
from worker.assemble import metrics_runtime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_metrics_endpoint_counters_move_after_a_delivery(
    harness: Harness, temporal_env: WorkflowEnvironment
) -> None:
    port = free_port()
    client = await Client.connect(
        temporal_env.client.service_client.config.target_host,
        data_converter=pydantic_data_converter,
        runtime=metrics_runtime(port, host="127.0.0.1"),
    )
    harness.client = client
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")

    async def scrape() -> str:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"http://127.0.0.1:{port}/metrics")).text

    async with harness.worker():
        await harness.start(agent)
        await harness.admin.send_text(agent.id, "count me", sender=peer, context_id="c1")
        await wait_until(lambda: harness.replies_to(peer.id, agent.id), message="reply")
        line = await wait_until(
            lambda: _metric_line(scrape, "molecule_connect_replied", agent.id), message="replied metric"
        )
    assert line.rstrip().endswith(" 1")
    text = await scrape()
    assert "molecule_connect_received" in text and "molecule_connect_delivery_latency" in text
    assert "temporal_workflow_task" in text or "temporal_activity" in text  # the SDK's own metrics


async def _metric_line(scrape, name: str, workspace_id: str) -> str | None:
    for line in (await scrape()).splitlines():
        if line.startswith(name) and workspace_id in line:
            return line
    return None
