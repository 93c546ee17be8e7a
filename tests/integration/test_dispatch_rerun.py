"""Debugging a failed dispatch through the real console script, as the README's steps do: export the history,
replay it (``--debug``, several files after one ``--history``), re-run the failed dispatch's recorded input on its
backend and on a fixed one (``dispatch rerun``), replying to no one."""

from __future__ import annotations

from pathlib import Path

from activities.messages import BackendSpec
from tests.helpers import Harness, wait_until
from tests.integration import test_cli_connectors
from tests.integration.test_cli_connectors import assert_one_line, cli

cli_env = test_cli_connectors.cli_env

AGENT = 'sh -c \'read t; if [ "$t" = fail ]; then echo boom >&2; exit 3; fi; echo "ok $t"\''


async def test_dispatch_rerun_reproduces_the_failure_and_tries_a_fix(
    harness: Harness, cli_env: dict[str, str], tmp_path: Path
) -> None:
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    wf = f"connect-{agent.id}"
    async with harness.worker():
        await harness.start(agent, BackendSpec(name="exec", options={"cmd": AGENT}), max_attempts=2)
        await harness.admin.send_text(agent.id, "fail", sender=peer, context_id="c1")
        statuses = await wait_until(
            lambda: _dead_letters(harness, agent.id), timeout=60, message="the message dead-lettered"
        )
        row = statuses[0].row_id
        replies_before = await harness.replies_to(peer.id, agent.id)

        again = await cli(cli_env, "dispatch", "rerun", "--workflow-id", wf, "--row", row)
        assert again.code == 1, again
        assert "recorded failed: exec: 'sh' exited with status 3: boom" in again.stderr, again.stderr
        assert again.stderr.strip().splitlines()[-1].startswith("molecule-connect: exec(cmd=")
        assert "failed again: exec: 'sh' exited with status 3: boom" in again.stderr

        fixed = await cli(
            cli_env, "dispatch", "rerun", "--workflow-id", wf, "--row", row, "-b", "exec", "-o", "cmd=tr a-z A-Z"
        )
        assert fixed.code == 0, fixed
        assert fixed.stdout == "FAIL\n"
        assert "nothing is replied to anyone" in fixed.stderr

        exported = tmp_path / "failed.json"
        assert (await cli(cli_env, "history", "export", "--workflow-id", wf, "-o", str(exported))).code == 0
        offline = await cli(cli_env, "dispatch", "rerun", "--history", str(exported), "--row", row, "-o", "cmd=rev")
        assert offline.code == 0, offline
        assert offline.stdout == "liaf\n"

        missing = await cli(cli_env, "dispatch", "rerun", "--workflow-id", wf, "--row", "no-such-row")
        assert_one_line(missing, 2, "no dispatch of row no-such-row")

        replayed = await cli(cli_env, "replay", "--debug", "--history", str(exported), str(exported))
        assert replayed.code == 0, replayed
        assert replayed.stdout.splitlines() == [f"OK    {exported}", f"OK    {exported}"]

        # Nothing was sent by the re-runs: the peer has the same replies (the dead letter's error reply).
        assert await harness.replies_to(peer.id, agent.id) == replies_before


async def _dead_letters(harness: Harness, workspace_id: str):
    return (await harness.status(workspace_id)).dead_letters
