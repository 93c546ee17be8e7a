"""Commands that query or control connectors.

``status`` (one connector, or the table of all), and the control plane: ``pause``, ``resume``, ``drain``, ``cursor``,
``dead-letters``, ``configure``.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
import typer

from worker import control
from worker.cli.common import (
    DEFAULT_TIMEOUT,
    TimeoutOption,
    UsageProblem,
    connect_client,
    connection_options,
    parse_options,
    run_async,
)
from worker.control import connector_status
from worker.settings import workflow_id
from workflows.messages import DeadLetterList, StatusResult

PAGE_SIZE = 100
"""Dead letters listed per page by `dead-letters`."""

app = typer.Typer()


def format_status(status: StatusResult) -> str:
    """A human-readable, multi-line rendering of ``status``."""
    cursor = status.commit_cursor.row_id if status.commit_cursor else "-"
    lines = [
        f"workspace   {status.workspace_id}  ({status.platform_url}, backend {status.backend})",
        f"phase       {status.phase}" + (f" — {status.blocked_reason}" if status.blocked_reason else ""),
        f"cursor      {cursor}  (pending {status.pending}, in flight {len(status.in_flight)})",
        "counters    " + ", ".join(f"{k} {v}" for k, v in status.counters.items()),
        f"heartbeat   {'running' if status.heartbeat.running else 'stopped'}",
        f"dead        {len(status.dead_letters)} dead letter(s)"
        + (f", {status.dead_letters_evicted} evicted" if status.dead_letters_evicted else ""),
    ]
    if status.lanes:
        lines.append("lanes       " + ", ".join(f"{lane}: {n}" for lane, n in status.lanes.items()))
    for letter in status.dead_letters[:10]:
        lines.append(f"  ✗ row {letter.row_id} [{letter.stage}] {letter.error}")
    if status.last_error:
        lines.append(f"last error  {status.last_error}")
    return "\n".join(lines)


TABLE_COLUMNS = ("WORKSPACE", "PHASE", "LAG", "IN FLIGHT", "DEAD", "LAST DELIVERY", "LAST ERROR")
"""Columns of the connector table; LAG is ``pending``: messages fetched past the commit cursor, not yet settled."""


def format_status_table(rows: list[control.ConnectorRow], now: datetime) -> str:
    """An aligned table, one connector a line; a failed query shows ``?`` (``no worker``, ``encrypted``) and why."""
    lines = [TABLE_COLUMNS]
    for row in rows:
        s = row.status
        if s is None:
            if row.no_worker:  # the advice names the task queue: never clipped
                lines.append((row.workspace_id, "no worker", "-", "-", "-", "-", row.error or "no worker"))
            elif row.encrypted:  # the advice names the variable (and a key id): never clipped
                lines.append((row.workspace_id, "encrypted", "-", "-", "-", "-", row.error or "encrypted"))
            else:
                lines.append((row.workspace_id, "?", "-", "-", "-", "-", _clip(row.error or "no status")))
        else:
            last_error = _clip(s.last_error or s.blocked_reason or "-")
            delivered = _age(s.last_delivery_at, now)
            counts = (str(s.pending), str(len(s.in_flight)), str(len(s.dead_letters)))
            lines.append((row.workspace_id, s.phase, *counts, delivered, last_error))
    widths = [max(len(line[i]) for line in lines) for i in range(len(TABLE_COLUMNS) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1]
        for line in lines
    )


def _age(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "never"
    seconds = max(0, int((now - at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _clip(text: str, width: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def print_rows(rows: list[control.ConnectorRow], as_json: bool) -> None:
    """Print rows as the table, or as a JSON list of ``{workspace_id, workflow_id, error, no_worker, ...}``.

    Each JSON item holds ``workspace_id``, ``workflow_id``, ``error``, ``no_worker``, ``encrypted`` and ``status``.
    """
    if as_json:
        listing = [
            {
                "workspace_id": row.workspace_id,
                "workflow_id": workflow_id(row.workspace_id),
                "error": row.error,
                "no_worker": row.no_worker,
                "encrypted": row.encrypted,
                "status": row.status.model_dump(mode="json") if row.status is not None else None,
            }
            for row in rows
        ]
        print(orjson.dumps(listing, option=orjson.OPT_INDENT_2).decode())
    elif rows:
        print(format_status_table(rows, datetime.now(UTC)))
    else:
        print("no running connectors", file=sys.stderr)


def _status_of_all(task_queue: str | None, timeout: float, as_json: bool) -> None:
    async def main() -> None:
        client = (await connect_client()).client
        running = await control.list_connectors(client, task_queue=task_queue)
        workspace_ids = [c.workspace_id for c in running]
        queues = {c.workspace_id: c.task_queue for c in running}
        rows = await control.connector_rows(
            client, workspace_ids, timeout=timedelta(seconds=timeout), task_queues=queues
        )
        print_rows(rows, as_json)

    run_async(main)


@app.command()
@connection_options
def status(
    workspace_id: Annotated[
        str | None, typer.Argument(help="The workspace whose connector to query; all running ones when omitted.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full status as JSON (a list for all).")] = False,
    task_queue: Annotated[
        str | None, typer.Option("--task-queue", help="Without WORKSPACE_ID: only connectors on this task queue.")
    ] = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Show a connector's phase, cursor, lanes, in-flight messages and dead letters (the ``status`` query).

    Without WORKSPACE_ID: every running connector (from Temporal visibility) as a table, queried concurrently; a
    connector no worker serves shows `no worker`.
    """
    if workspace_id is None:
        _status_of_all(task_queue, timeout, as_json)
        return

    async def main() -> None:
        connected = await connect_client()
        result = await connector_status(connected.client, workspace_id, timeout=timedelta(seconds=timeout))
        if as_json:
            print(orjson.dumps(result.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
        else:
            print(format_status(result))

    run_async(main)


WorkspaceArg = Annotated[str, typer.Argument(help="The workspace whose connector to act on.")]


def _print_status_line(result: StatusResult) -> None:
    print(
        f"{workflow_id(result.workspace_id)}: phase {result.phase}, pending {result.pending}, "
        f"in flight {len(result.in_flight)}"
    )


def _control(action: Callable[[Any], Awaitable[Any]], render: Callable[[Any], None] = _print_status_line) -> None:
    async def main() -> None:
        connected = await connect_client()
        render(await action(connected.client))

    run_async(main)


@app.command()
@connection_options
def pause(workspace_id: WorkspaceArg, timeout: TimeoutOption = DEFAULT_TIMEOUT) -> None:
    """Stop polling and dispatching; returns once in-flight messages settled (the `pause` update)."""
    _control(lambda c: control.pause_connector(c, workspace_id, timeout=timedelta(seconds=timeout)))


@app.command()
@connection_options
def resume(workspace_id: WorkspaceArg, timeout: TimeoutOption = DEFAULT_TIMEOUT) -> None:
    """Resume a paused connector (the `resume` update)."""
    _control(lambda c: control.resume_connector(c, workspace_id, timeout=timedelta(seconds=timeout)))


@app.command()
@connection_options
def drain(workspace_id: WorkspaceArg, timeout: TimeoutOption = DEFAULT_TIMEOUT) -> None:
    """Deliver what was fetched, then complete the connector workflow (the `drain` update)."""
    _control(lambda c: control.drain_connector(c, workspace_id, timeout=timedelta(seconds=timeout)))


@app.command()
@connection_options
def cursor(
    workspace_id: WorkspaceArg,
    set_: Annotated[str | None, typer.Option("--set", help="Continue polling after this row id (UUID).")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="Skip to the newest row.")] = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Move the inbox cursor (the `set_cursor` update); settled messages are never redelivered."""
    if (set_ is None) == (not latest):
        raise UsageProblem("give exactly one of --set ROW_ID or --latest")
    row_id = "latest" if latest else str(set_)
    _control(lambda c: control.set_cursor(c, workspace_id, row_id, timeout=timedelta(seconds=timeout)))


@app.command("dead-letters")
@connection_options
def dead_letters(
    workspace_id: WorkspaceArg,
    redrive_id: Annotated[
        str | None, typer.Option("--redrive", help="Redrive the dead letter with this row id.")
    ] = None,
    redrive_all: Annotated[bool, typer.Option("--all", help="With no --redrive/--discard id: redrive all.")] = False,
    discard_id: Annotated[
        str | None, typer.Option("--discard", help="Forget the dead letter with this row id.")
    ] = None,
    page: Annotated[
        int, typer.Option("--page", help="List this page of dead letters (100 a page, oldest first).", min=1)
    ] = 1,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """List dead letters a page at a time, or redrive / discard them (the `redrive` and `discard` updates)."""
    if sum(x is not None and x is not False for x in (redrive_id, discard_id, redrive_all or None)) > 1:
        raise UsageProblem("give one of --redrive ROW_ID, --all or --discard ROW_ID")
    limit = timedelta(seconds=timeout)

    def render_action(result: Any) -> None:
        print(f"{result.count} dead letter(s): {', '.join(result.row_ids) or '-'}")

    def render_list(result: DeadLetterList) -> None:
        if not result.letters:
            print("no dead letters" if result.total == 0 else f"no dead letters on page {page} ({result.total} in all)")
        for letter in result.letters:
            print(f"{letter.row_id}  [{letter.stage}, {letter.attempts} attempt(s)]  {letter.lane}  {letter.error}")
        if result.total > PAGE_SIZE * page:
            print(f"... {result.total} dead letters in all: see --page {page + 1}", file=sys.stderr)

    if redrive_id or redrive_all:
        _control(lambda c: control.redrive(c, workspace_id, redrive_id, timeout=limit), render_action)
    elif discard_id:
        _control(lambda c: control.discard(c, workspace_id, discard_id, timeout=limit), render_action)
    else:
        offset = PAGE_SIZE * (page - 1)
        _control(
            lambda c: control.dead_letter_page(c, workspace_id, offset=offset, limit=PAGE_SIZE, timeout=limit),
            render_list,
        )


@app.command()
@connection_options
def configure(
    workspace_id: WorkspaceArg,
    settings: Annotated[list[str], typer.Argument(help="KEY=VALUE settings, e.g. max_concurrency=8.")],
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Change a running connector's settings (the `configure` update); values are JSON or plain strings."""
    changes: dict[str, object] = {}
    for key, value in parse_options(settings).items():
        try:
            changes[key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            changes[key] = value
    _control(lambda c: control.configure(c, workspace_id, changes, timeout=timedelta(seconds=timeout)))
