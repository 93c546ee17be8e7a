"""Delivery timings read back from the platform: inbound row → reply row, split at the inbox read that fetched it.

Every time comes from the platform process's clock: ``created_at`` of the inbound ``a2a_receive`` row (the
platform accepted the message) and of the reply row it stored in the peer's inbox (the platform accepted the
reply), and the start of the first inbox read of the agent's workspace that returned rows at or after the
inbound row (from :class:`benchmarks.platform_process.RequestLog`). Hence, per message:

- ``latency`` = reply created − inbound created;
- ``poll_wait`` = fetched − inbound created, where fetched = max(inbound created, start of that read): the time
  the message sat in the inbox before a read picked it up, which only the poll interval decides;
- ``overhead`` = reply created − fetched: everything the connector did after the read began (the read itself,
  handing rows to the workflow, dispatch, backend, reply, and Temporal's round trips in between).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from benchmarks.stack import Stack, gather_limited
from benchmarks.stats import summarize


def row_time(row: dict[str, Any]) -> float:
    """``created_at`` of a platform row as epoch seconds."""
    return datetime.fromisoformat(str(row["created_at"]).replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Delivery:
    """One message's timings (epoch seconds, platform clock)."""

    workspace_id: str
    row_id: str
    received: float
    replied: float
    fetched: float | None

    @property
    def latency_s(self) -> float:
        """Platform accepted the message → platform accepted the reply."""
        return self.replied - self.received

    @property
    def poll_wait_s(self) -> float | None:
        """Time in the inbox before the read that fetched it began."""
        return None if self.fetched is None else self.fetched - self.received

    @property
    def overhead_s(self) -> float | None:
        """Latency beyond the poll wait."""
        return None if self.fetched is None else self.replied - self.fetched


async def collect(
    stack: Stack, agent_ids: list[str], peer_id: str, *, with_reads: bool = True, concurrency: int = 8
) -> list[Delivery]:
    """Every replied message the peer sent to ``agent_ids``, oldest first.

    Replies are matched to inbound rows by ``metadata.activity_id`` (the connector and the baseline both set it
    to the inbound row id, docs/protocol.md §5).
    """
    replied: dict[str, float] = {}
    for row in await stack.admin.rows(peer_id):
        if row.get("method") != "message/send" or row.get("source_id") not in agent_ids:
            continue
        metadata = (((row.get("request_body") or {}).get("params") or {}).get("message") or {}).get("metadata") or {}
        if isinstance(metadata.get("activity_id"), str):
            replied[metadata["activity_id"]] = row_time(row)

    async def one(agent_id: str) -> list[Delivery]:
        rows, reads = await asyncio.gather(
            stack.admin.rows(agent_id),
            stack.platform.inbox_reads(agent_id) if with_reads else asyncio.sleep(0, result=[]),
        )
        nonempty = sorted((end, start) for start, end, returned in reads if returned)
        ends = [end for end, _ in nonempty]
        out = []
        for row in rows:
            if row.get("source_id") != peer_id or row.get("method") != "message/send" or row["id"] not in replied:
                continue
            received = row_time(row)
            fetched = None
            index = bisect_left(ends, received)
            if index < len(nonempty):
                fetched = max(received, nonempty[index][1])
            out.append(Delivery(agent_id, row["id"], received, replied[row["id"]], fetched))
        return out

    per_agent = await gather_limited(agent_ids, one, limit=concurrency)
    return sorted((d for group in per_agent for d in group), key=lambda d: d.received)


def summary_ms(deliveries: list[Delivery]) -> dict[str, Any]:
    """Latency, poll wait and overhead of ``deliveries`` in milliseconds (``n``, p50/p95/p99, mean, min, max)."""
    return {
        "latency_ms": summarize([d.latency_s * 1000 for d in deliveries], digits=1),
        "poll_wait_ms": summarize([d.poll_wait_s * 1000 for d in deliveries if d.poll_wait_s is not None], digits=1),
        "overhead_ms": summarize([d.overhead_s * 1000 for d in deliveries if d.overhead_s is not None], digits=1),
    }
