"""Fleet commands: ``fleet apply`` and ``fleet status`` over a TOML fleet file (``worker.fleet``)."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from worker import control
from worker import loop as event_loop
from worker.cli.common import (
    DEFAULT_TIMEOUT,
    TimeoutOption,
    UsageProblem,
    connect_client,
    connection_options,
    run_async,
)
from worker.cli.connectors import print_rows

app = typer.Typer()

fleet_app = typer.Typer(
    help="Fleets: many connectors declared in one TOML file, applied idempotently.", no_args_is_help=True
)
app.add_typer(fleet_app, name="fleet")

FleetFileArg = Annotated[
    Path, typer.Argument(help="Fleet file: TOML with an optional name, [defaults] and [[workspace]] tables.")
]
FleetTaskQueueOption = Annotated[
    str | None,
    typer.Option(
        "--task-queue",
        envvar="MOLECULE_TASK_QUEUE",
        help="The fleet's task queue: overrides [defaults] task_queue (default molecule-connect), not a "
        "[[workspace]]'s own task_queue.",
        show_default=False,
    ),
]


def _load_fleet(path: Path) -> Any:
    from worker.fleet import FleetFileError, load_fleet

    try:
        return load_fleet(path)
    except FleetFileError as err:
        raise UsageProblem(str(err)) from None


@fleet_app.command("apply")
@connection_options
def fleet_apply(
    file: FleetFileArg,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Also drain the connectors this fleet started (same name) on its task queues that FILE no longer "
            "lists; connectors started by hand or by another fleet are never touched.",
        ),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
    task_queue: FleetTaskQueueOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Start missing connectors and configure changed ones, one line per workspace (idempotent).

    The connectors it starts carry the fleet's name (memo `fleet`: the file's `name`, else its file name without
    .toml), which is what --prune goes by. Exits 1 when a workspace could not be read or changed (e.g. no worker
    answers), or needs a restart (backend, platform URL or task queue changed).
    """
    from worker import fleet

    loaded = _load_fleet(file)

    async def main() -> int:
        try:
            await fleet.check_backends(loaded)
        except fleet.FleetFileError as err:
            raise UsageProblem(str(err)) from None
        client = (await connect_client()).client
        limit = timedelta(seconds=timeout)
        steps = await fleet.plan(client, loaded, task_queue=task_queue, prune=prune, timeout=limit)
        outcomes = (
            [None] * len(steps)
            if dry_run
            else await fleet.apply(
                client,
                steps,
                fleet_name=loaded.name,
                task_queue=loaded.fleet_task_queue(task_queue),
                timeout=limit,
            )
        )
        for step, error in zip(steps, outcomes, strict=True):
            print(step.describe() + (f": failed: {error}" if error else ""))
        if dry_run:
            print("dry run: nothing changed", file=sys.stderr)
        return sum(1 for step, error in zip(steps, outcomes, strict=True) if error or step.kind in ("error", "restart"))

    if event_loop.run(main()):
        raise SystemExit(1)


@fleet_app.command("status")
@connection_options
def fleet_status(
    file: FleetFileArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Show the connector table for the workspaces FILE lists (one status query each, concurrently)."""
    loaded = _load_fleet(file)

    async def main() -> None:
        client = (await connect_client()).client
        rows = await control.connector_rows(client, loaded.workspace_ids, timeout=timedelta(seconds=timeout))
        print_rows(rows, as_json)

    run_async(main)
