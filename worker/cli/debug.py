"""Replay debugging: ``replay``, ``history export`` and ``dispatch rerun``.

``replay`` runs histories against the current workflow code; ``dispatch rerun`` runs a failed dispatch's recorded
input once on its backend, here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import orjson
import typer
from temporalio.client import Client, WorkflowHistory

from worker import loop as event_loop
from worker.cli.common import (
    BackendOptions,
    UsageProblem,
    connect_client,
    connection_options,
    parse_options,
    run_async,
)
from worker.codec import data_converter
from worker.control import backend_text

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


dispatch_app = typer.Typer(help="Failed dispatches: run one again locally to reproduce it.", no_args_is_help=True)
app.add_typer(dispatch_app, name="dispatch")


@dispatch_app.command("rerun")
@connection_options
def dispatch_rerun(
    row: Annotated[str, typer.Option("--row", help="The row id of the failed message (`dead-letters WS` lists them).")],
    workflow_id_: Annotated[
        str | None, typer.Option("--workflow-id", help="The connector, e.g. connect-<workspace id>.")
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Start looking in this run (default: the latest).")
    ] = None,
    history: Annotated[
        Path | None, typer.Option("--history", help="Look in this history file instead of asking the server.")
    ] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", "-b", help="Run this backend instead of the recorded one.")
    ] = None,
    option: BackendOptions = None,
) -> None:
    """Run a failed dispatch's recorded input on its backend once, here; print the answer and reply to no one.

    The input is the `dispatch` activity's, from the workflow's history (the runs it continued from too) or from
    --history. --backend and -o try another backend or other options (-o alone: the recorded backend with these
    options over its own). A body passed by reference (over 256 KiB) is re-read from the platform with the token
    from $MOLECULE_WORKSPACE_TOKEN or $MOLECULE_TOKENS_FILE. Exit 1 when the backend fails again.
    """
    from activities.a2a import TextPart
    from activities.backends.base import BackendError
    from activities.messages import BackendSpec
    from worker.replay import load_history
    from worker.rerun import RerunError, find_dispatch, rerun

    if (workflow_id_ is None) == (history is None):
        raise UsageProblem("give --workflow-id ID or --history FILE")
    converter = data_converter()

    async def main() -> int:
        if history is not None:
            try:
                recorded_history = load_history(history)
            except ValueError as err:
                raise UsageProblem(str(err)) from None
            previous = None
        else:
            assert workflow_id_ is not None
            client = (await connect_client()).client
            recorded_history = await fetch(client, workflow_id_, run_id)

            async def previous(earlier_run: str) -> WorkflowHistory:
                return await fetch(client, workflow_id_, earlier_run)

        try:
            found = await find_dispatch(recorded_history, row, converter, previous_run=previous)
        except RerunError as err:
            raise UsageProblem(str(err)) from None
        recorded = found.input
        spec = recorded.backend
        if backend is not None or option:
            options = parse_options(option)
            spec = (
                BackendSpec(name=backend, options=options)
                if backend
                else spec.model_copy(update={"options": {**spec.options, **options}})
            )
        print(
            f"row {row} of {recorded_history.workflow_id} (run {found.run_id or '?'}), lane {recorded.lane}, "
            f"attempt {recorded.attempt or '?'}: recorded {found.outcome}",
            file=sys.stderr,
        )
        print(f"running {backend_text(spec)} once here; nothing is replied to anyone", file=sys.stderr)
        token_for = _token_lookup(recorded.target.workspace_id)
        try:
            response = await rerun(recorded, backend=spec, token_for=token_for)
        except RerunError as err:
            raise UsageProblem(str(err)) from None
        except BackendError as err:
            print(f"molecule-connect: {backend_text(spec)} failed again: {' '.join(str(err).split())}", file=sys.stderr)
            return 1
        for part in response.parts:
            if isinstance(part, TextPart):
                print(part.text)
            else:
                print(orjson.dumps(part.model_dump(mode="json", by_alias=True, exclude_none=True)).decode())
        return 0

    if event_loop.run(main()):
        raise SystemExit(1)


def _token_lookup(workspace_id: str) -> Callable[[str], str] | None:
    """The worker's token lookup when the environment holds this workspace's token, else None."""
    from worker.secrets import TokenError, TokenStore

    try:
        tokens = TokenStore.from_env(workspace_id=workspace_id)
        tokens.token_for(workspace_id)
    except (TokenError, LookupError):
        return None
    return tokens.token_for
