"""Replay debugging: ``replay`` (histories against the current workflow code) and ``history export``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from worker import loop as event_loop
from worker.cli.common import UsageProblem, connect_client, run_async
from worker.codec import data_converter

app = typer.Typer()


@app.command("replay")
def replay_command(
    workflow_id_: Annotated[
        str | None, typer.Option("--workflow-id", help="Replay this workflow's history from the server.")
    ] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="A specific run (default: the latest).")] = None,
    history: Annotated[list[Path] | None, typer.Option("--history", help="History JSON file(s) (repeatable).")] = None,
) -> None:
    """Replay histories against the current workflow code; report OK or the first nondeterminism (exit 1)."""
    from worker.replay import fetch_history, load_history, replay

    if (workflow_id_ is None) == (not history):
        raise UsageProblem("give --workflow-id ID or one or more --history FILE")
    if run_id and not workflow_id_:
        raise UsageProblem("--run-id needs --workflow-id")

    async def main() -> int:
        if workflow_id_ is not None:
            connected = await connect_client()
            loaded = [(f"{workflow_id_}", await fetch_history(connected.client, workflow_id_, run_id))]
        else:
            try:
                loaded = [(str(path), load_history(path)) for path in history or []]
            except ValueError as err:
                raise UsageProblem(str(err)) from None
        failed = 0
        for outcome in await replay(loaded, data_converter=data_converter()):
            if outcome.ok:
                print(f"OK    {outcome.source}")
            else:
                failed += 1
                at = f" (event {outcome.event_id})" if outcome.event_id is not None else ""
                print(f"FAIL  {outcome.source}{at}: {outcome.error}")
        return failed

    if event_loop.run(main()):
        raise SystemExit(1)


history_app = typer.Typer(help="Workflow histories: export for replay debugging.", no_args_is_help=True)
app.add_typer(history_app, name="history")


@history_app.command("export")
def history_export(
    workflow_id_: Annotated[str, typer.Option("--workflow-id", help="The workflow, e.g. connect-<workspace id>.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSON.")],
    run_id: Annotated[str | None, typer.Option("--run-id", help="A specific run (default: the latest).")] = None,
) -> None:
    """Write a workflow's full history as JSON (the format of `temporal workflow show --output json`)."""
    from temporalio.service import RPCError

    from worker.replay import fetch_history, history_json

    async def main() -> None:
        connected = await connect_client()
        try:
            history = await fetch_history(connected.client, workflow_id_, run_id)
        except RPCError as err:
            raise UsageProblem(f"cannot export {workflow_id_}: {err.message}") from None
        output.write_bytes(history_json(history))
        print(f"wrote {len(history.events)} events of {workflow_id_} to {output}", file=sys.stderr)

    run_async(main)
