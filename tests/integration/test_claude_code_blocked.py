"""End to end: a Claude Code that cannot run blocks the connector with its own words; nothing is dead-lettered.

The ``claude`` here is the fake of the backend tests (tests/unit/backends/commands/fake_claude.py), which prints the
real CLI's outputs word for word: not logged in, it prints ``Not logged in · Please run /login`` on stdout and exits 1.
"""

from __future__ import annotations

from pathlib import Path

from activities.messages import BackendSpec
from tests.helpers import Harness, reply_text, wait_until
from tests.integration.test_engine import _replies_for, _status_when
from tests.unit.backends.commands import fake_claude as fake


async def test_claude_code_not_logged_in_blocks_then_answers_once_logged_in(harness: Harness, tmp_path: Path) -> None:
    """Before: every message was dead-lettered as "exited with status 1: (stderr empty)" and its sender told it
    failed. Now the connector is ``blocked`` with Claude's words, the message waits, and once Claude is logged in
    it is answered, in the conversation's session, exactly once."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    program = fake.install(tmp_path)
    (tmp_path / "claude-state" / "account").write_text("logged_out")
    backend = BackendSpec(name="claude-code", options={"bin": str(program), "state_dir": str(tmp_path / "markers")})
    async with harness.worker():
        await harness.start(agent, backend, max_attempts=2)
        await harness.admin.send_text(agent.id, "hello", sender=peer, context_id="c1", message_id="m-1")
        blocked = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.phase == "blocked"), message="phase blocked"
        )
        assert blocked.blocked_reason is not None
        assert "Claude Code cannot run: Not logged in · Please run /login; log in" in blocked.blocked_reason
        assert blocked.counters["dead_lettered"] == 0 and blocked.dead_letters == []
        assert await harness.replies_to(peer.id, agent.id) == []

        (tmp_path / "claude-state" / "account").write_text("ok")
        replies = await wait_until(lambda: _replies_for(harness, peer, agent, ["m-1"]), message="the reply")
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["replied"] == 1), message="m-1 settled"
        )

    assert [reply_text(r) for r in replies] == ["turn 2: hello"]  # Claude had recorded the session: resumed
    assert status.phase != "blocked" and status.blocked_reason is None
    assert status.dead_letters == []
