"""Workers of one host split one request budget through a directory of locked files; a killed worker's share
goes back to the others."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from activities.budget import Priority
from activities.planner import RequestBudgets
from tests.helpers import wait_until
from worker.budget_share import BudgetShareError, HostBudgetShare

URL = "http://platform.test:8080"
REPO = Path(__file__).resolve().parents[2]


def serving(budgets: RequestBudgets, workspaces: int, prefix: str) -> None:
    planner = budgets.planner_for(URL)
    for n in range(workspaces):
        planner.note_request(f"{prefix}-{n}", Priority.HEARTBEAT)


def test_share_two_workers_split_the_budget_by_workspaces(tmp_path: Path) -> None:
    """30 and 10 workspaces on one host: 480 × 31/42 and 480 × 11/42 per minute, together the host's 480."""
    first, second = RequestBudgets(), RequestBudgets()
    serving(first, 30, "a")
    serving(second, 10, "b")
    news: list[str] = []
    share_a = HostBudgetShare(first, tmp_path, announce=news.append)
    share_b = HostBudgetShare(second, tmp_path, announce=news.append)
    try:
        share_a.start()
        assert first.for_url(URL).effective_per_minute() == 480  # alone so far
        share_b.start()  # a new worker reads its peers before its first request
        assert second.for_url(URL).effective_per_minute() == pytest.approx(480 * 11 / 42)
        share_a.refresh()
        assert first.for_url(URL).effective_per_minute() == pytest.approx(480 * 31 / 42)
        assert [p.id for p in share_a.peers] == [share_b.id]
        assert any("shared with 1 other worker(s)" in line for line in news)
    finally:
        share_b.close()
        share_a.refresh()
        share_a.close()
    assert first.for_url(URL).effective_per_minute() == 480  # the peer left
    assert list(tmp_path.iterdir()) == []


def test_share_smallest_claimed_budget_is_the_hosts(tmp_path: Path) -> None:
    big, small = RequestBudgets(per_minute=480), RequestBudgets(per_minute=240)
    serving(big, 1, "a")
    serving(small, 1, "b")
    shares = [HostBudgetShare(b, tmp_path) for b in (big, small)]
    try:
        for share in shares:
            share.start()
        shares[0].refresh()
        assert big.for_url(URL).effective_per_minute() == pytest.approx(120)
        assert small.for_url(URL).effective_per_minute() == pytest.approx(120)
    finally:
        for share in shares:
            share.close()


def test_share_platform_first_used_after_start_gets_its_share_before_any_request(tmp_path: Path) -> None:
    peer = RequestBudgets()
    serving(peer, 3, "a")
    peer_share = HostBudgetShare(peer, tmp_path)
    mine = RequestBudgets()
    my_share = HostBudgetShare(mine, tmp_path)
    try:
        peer_share.start()
        my_share.start()
        assert mine.for_url(URL).effective_per_minute() == pytest.approx(480 * 1 / 5)
    finally:
        my_share.close()
        peer_share.close()


def test_share_killed_worker_is_noticed_and_its_files_removed(tmp_path: Path) -> None:
    """A worker killed with SIGKILL cannot clean up, but its lock dies with it: the next refresh gives its share
    back and removes its files."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from activities.budget import Priority
        from activities.planner import RequestBudgets
        from worker.budget_share import HostBudgetShare
        budgets = RequestBudgets()
        budgets.planner_for({URL!r}).note_request("other", Priority.HEARTBEAT)
        HostBudgetShare(budgets, Path(sys.argv[1])).start()
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, env=env, cwd=REPO, text=True
    )
    mine = RequestBudgets()
    serving(mine, 1, "a")
    share = HostBudgetShare(mine, tmp_path)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        share.start()
        assert mine.for_url(URL).effective_per_minute() == pytest.approx(240)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert len(list(tmp_path.glob("*.lock"))) == 2  # its files are still there
        share.refresh()
        assert mine.for_url(URL).effective_per_minute() == 480
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{share.id}.json", f"{share.id}.lock"])
    finally:
        share.close()
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


def test_share_unusable_directory_is_an_error_with_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    share = HostBudgetShare(RequestBudgets(), blocker / "share")
    with pytest.raises(BudgetShareError, match="not-a-dir"):
        share.start()


async def test_share_refresh_runs_in_background_and_follows_the_fleet(tmp_path: Path) -> None:
    """``run`` re-reads the peers every refresh: when the peer takes on more workspaces, this worker's share falls."""
    peer, mine = RequestBudgets(), RequestBudgets()
    serving(peer, 1, "a")
    serving(mine, 1, "b")
    peer_share = HostBudgetShare(peer, tmp_path, refresh_s=0.05)
    my_share = HostBudgetShare(mine, tmp_path, refresh_s=0.05)
    peer_share.start()
    my_share.start()
    tasks = [asyncio.create_task(s.run()) for s in (peer_share, my_share)]
    try:
        await wait_until(lambda: mine.for_url(URL).effective_per_minute() == pytest.approx(240), timeout=10)
        serving(peer, 9, "c")  # the peer now serves 10
        await wait_until(lambda: mine.for_url(URL).effective_per_minute() == pytest.approx(480 * 2 / 13), timeout=10)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        my_share.close()
        peer_share.close()
