"""Replay debugging: ``replay`` (histories against the current workflow code) and ``history export``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from temporalio.client import Client, WorkflowHistory

from worker import loop as event_loop
from worker.cli.common import UsageProblem, connect_client, connection_options, run_async
from worker.codec import data_converter

app = typer.Typer()


async def fetch(client: Client, workflow_id: str, run_id: str | None) -> WorkflowHistory:
    """``worker.replay.fetch_history``, with a workflow that does not exist (or any refusal) as a UsageProblem."""
    from temporalio.service import RPCError, RPCStatusCode

    from worker.replay import fetch_history

    try:
        return await fetch_history(client, workflow_id, run_id)
    except RPCError as err:
        run = f" run {run_id}" if run_id else ""
        if err.status == RPCStatusCode.NOT_FOUND:
            raise UsageProblem(
                f"workflow {workflow_id}{run} not found in namespace {client.namespace}: connectors are "
                "connect-<workspace id> (`molecule-connect status` lists the running ones)"
            ) from None
        raise UsageProblem(f"cannot read the history of {workflow_id}{run}: {err.message}") from None


@app.command("replay")
@connection_options
def replay_command(
    files: Annotated[
        list[Path] | None, typer.Argument(help="History JSON files (the same as --history FILE ...).")
    ] = None,
    workflow_id_: Annotated[
        str | None, typer.Option("--workflow-id", help="Replay this workflow's history from the server.")
    ] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="A specific run (default: the latest).")] = None,
    history: Annotated[
        list[Path] | None,
        typer.Option("--history", help="History JSON file(s): --history a.json b.json, or the flag repeated."),
    ] = None,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="The SDK's debug mode: no deadlock detection, so a breakpoint in workflow code may hold a workflow "
            "task longer than 2 s.",
        ),
    ] = False,
) -> None:
    """Replay histories against the current workflow code; report OK or the first nondeterminism (exit 1)."""
    from worker.replay import load_history, replay

    paths = [*(history or []), *(files or [])]
    if (workflow_id_ is None) == (not paths):
        raise UsageProblem("give --workflow-id ID or one or more --history FILE")
    if run_id and not workflow_id_:
        raise UsageProblem("--run-id needs --workflow-id")

    async def main() -> int:
        if workflow_id_ is not None:
            connected = await connect_client()
            loaded = [(f"{workflow_id_}", await fetch(connected.client, workflow_id_, run_id))]
        else:
            try:
                loaded = [(str(path), load_history(path)) for path in paths]
            except ValueError as err:
                raise UsageProblem(str(err)) from None
        failed = 0
        for outcome in await replay(loaded, data_converter=data_converter(), debug=debug):
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
@connection_options
def history_export(
    workflow_id_: Annotated[str, typer.Option("--workflow-id", help="The workflow, e.g. connect-<workspace id>.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSON.")],
    run_id: Annotated[str | None, typer.Option("--run-id", help="A specific run (default: the latest).")] = None,
) -> None:
    """Write a workflow's full history as JSON (the format of `temporal workflow show --output json`)."""
    from worker.replay import history_json

    async def main() -> None:
        connected = await connect_client()
        history = await fetch(connected.client, workflow_id_, run_id)
        output.write_bytes(history_json(history))
        print(f"wrote {len(history.events)} events of {workflow_id_} to {output}", file=sys.stderr)

    run_async(main)
