"""What ``run`` and ``worker`` say about the request budget at start-up, from the connectors on their task queue."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from worker.cli.common import Budget, announce_budget


class FakeClient:
    """Answers ``count_workflows`` with a fixed count and remembers the query."""

    def __init__(self, count: int | Exception) -> None:
        self.count = count
        self.queries: list[str] = []

    async def count_workflows(self, query: str) -> SimpleNamespace:
        self.queries.append(query)
        if isinstance(self.count, Exception):
            raise self.count
        return SimpleNamespace(count=self.count)


async def test_startup_overloaded_task_queue_is_a_warning_with_advice(caplog: pytest.LogCaptureFixture) -> None:
    """300 connectors on the queue need 600 heartbeats/min, over 480: said at start-up with what to do."""
    client = FakeClient(300)
    with caplog.at_level(logging.WARNING):
        await announce_budget(client, "tq", Budget(480, 20, True))  # type: ignore[arg-type]
    assert "TaskQueue = 'tq'" in client.queries[0] and "ExecutionStatus = 'Running'" in client.queries[0]
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "600 heartbeats/min" in record.getMessage() and "more client IPs" in record.getMessage()


async def test_startup_budget_line_gives_the_planned_read_interval(capsys: pytest.CaptureFixture[str]) -> None:
    await announce_budget(FakeClient(100), "tq", Budget(480, 20, True))  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "100 connector(s) on tq" in err and "every 21.4 s" in err and "split with the other workers" in err


async def test_startup_visibility_failure_says_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    await announce_budget(FakeClient(RuntimeError("visibility down")), "tq", Budget(480, 20, False))  # type: ignore[arg-type]
    assert capsys.readouterr().err == ""
