"""The ``molecule-connect`` command line (Typer).

Commands: ``run`` (worker + ensured connector), ``worker``, ``start``, ``status``, the control plane (``pause``,
``resume``, ``drain``, ``cursor``, ``dead-letters``, ``configure``), fleets (``fleet apply``, ``fleet status``),
replay debugging (``replay``, ``history export``),
``dev-platform`` (with ``create-workspace``) and ``demo``.

``backends`` lists the backends this worker can run, plugins included, with their options.

Every user error prints one line on stderr that says what to do, and exits 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from pydantic import ValidationError
from temporalio.client import Client

try:  # recent typer vendors click as typer._click, whose exceptions are not click's classes
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

from activities.backends import BackendInfo, available_backends, create_backend
from activities.backends.base import BackendConfigError
from activities.budget import DEFAULT_BURST, DEFAULT_PER_MINUTE
from activities.messages import BackendSpec, ColdStart
from activities.probe import PlatformProbeError, probe_platform
from worker import control
from worker import loop as event_loop
from worker.codec import CodecError, data_converter
from worker.control import ConnectorError, connector_status, start_connector
from worker.logs import LOG_FORMAT_ENV, LOG_LEVEL_ENV, announce, configure_logging
from worker.secrets import TokenError, TokenStore
from worker.settings import TASK_QUEUE, workflow_id
from worker.temporal import ConnectedClient, TemporalConnectError
from worker.temporal import connect_client as connect_temporal
from workflows.messages import ConnectInput, ConnectSettings, StatusResult

USER_ERROR_EXIT = 2


class UsageProblem(Exception):
    """A mistake in what the user typed; the message is one line of advice."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageProblem,
    TokenError,
    TemporalConnectError,
    ConnectorError,
    BackendConfigError,
    CodecError,
)

app = typer.Typer(
    name="molecule-connect",
    help="Attach external agents to Molecule workspaces in poll mode, durably, on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

TaskQueueOption = Annotated[
    str, typer.Option("--task-queue", envvar="MOLECULE_TASK_QUEUE", help="Temporal task queue of the connectors.")
]
PlatformUrlOption = Annotated[
    str | None,
    typer.Option("--platform-url", envvar="MOLECULE_API_URL", help="Platform base URL (default: $MOLECULE_API_URL)."),
]
BackendOption = Annotated[str, typer.Option("--backend", "-b", help="Backend name: echo, exec, ...")]
BackendOptions = Annotated[
    list[str] | None,
    typer.Option("--option", "-o", help="Backend option KEY=VALUE (repeatable), e.g. -o cmd='tr a-z A-Z'."),
]
ShutdownGraceOption = Annotated[
    float,
    typer.Option("--shutdown-grace", help="Seconds in-flight dispatches may finish after SIGTERM/SIGINT.", min=0),
]
MetricsPortOption = Annotated[
    int | None,
    typer.Option("--metrics-port", help="Serve Prometheus metrics (SDK + connector counters) on this port."),
]
RequestBudgetOption = Annotated[
    float,
    typer.Option(
        "--request-budget",
        envvar="MOLECULE_REQUEST_BUDGET",
        help="Platform requests per minute shared by all connectors of this worker, per platform (0: unlimited).",
        min=0,
    ),
]
SharedBudgetOption = Annotated[
    bool,
    typer.Option(
        "--shared-budget/--no-shared-budget",
        envvar="MOLECULE_SHARED_BUDGET",
        help="Split the request budget with the other workers on this host (they share its IP) instead of each "
        "using all of it.",
    ),
]
RequestBurstOption = Annotated[
    int,
    typer.Option(
        "--request-burst", envvar="MOLECULE_REQUEST_BURST", help="Requests that may start at once (bucket size).", min=1
    ),
]
StartFromOption = Annotated[
    str, typer.Option("--start-from", help="Cold start: 'latest' (deliver nothing old) or 'backlog' (oldest first).")
]
LogFormatOption = Annotated[
    str, typer.Option("--log-format", envvar=LOG_FORMAT_ENV, help="Log lines as 'text' or 'json' (one object a line).")
]
LogLevelOption = Annotated[
    str, typer.Option("--log-level", envvar=LOG_LEVEL_ENV, help="DEBUG, INFO, WARNING or ERROR.")
]
QueryTimeoutOption = Annotated[
    float, typer.Option("--timeout", help="Seconds each connector's status query may take.", min=0.1)
]
NoProbeOption = Annotated[
    bool, typer.Option("--no-probe", help="Skip the startup check that the platform supports poll mode's cursor.")
]


def _fail(message: str) -> NoReturn:
    print(f"molecule-connect: {message}", file=sys.stderr)
    raise SystemExit(USER_ERROR_EXIT)


def _first_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"invalid {where or 'value'}: {first.get('msg', 'invalid')}"


def _parse_options(pairs: list[str] | None) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageProblem(f"option {pair!r} is not KEY=VALUE: write e.g. -o cmd='tr a-z A-Z'")
        options[key.strip()] = value
    return options


def _connect_input(
    workspace_id: str, platform_url: str | None, backend: str, options: list[str] | None, start_from: str
) -> ConnectInput:
    if not platform_url:
        raise UsageProblem("no platform URL: pass --platform-url URL or set MOLECULE_API_URL")
    if start_from not in ("latest", "backlog"):
        raise UsageProblem(f"--start-from must be 'latest' or 'backlog', not {start_from!r}")
    spec = BackendSpec(name=backend, options=_parse_options(options))
    _check_backend(spec)
    start: ColdStart = "latest" if start_from == "latest" else "backlog"
    return ConnectInput(
        workspace_id=workspace_id,
        platform_url=platform_url,
        backend=spec,
        settings=ConnectSettings(start_from=start),
    )


def _check_backend(spec: BackendSpec) -> None:
    """Build the backend once, so a misconfiguration fails here rather than in every dispatch."""
    backend = create_backend(spec.name, spec.options)
    with contextlib.suppress(Exception):
        event_loop.run(backend.close())


def _tokens_for(workspace_id: str | None) -> TokenStore:
    tokens = TokenStore.from_env()
    tokens.validate()
    if workspace_id is not None:
        tokens.token_for(workspace_id)
    return tokens


def _probe(input: ConnectInput, tokens: TokenStore) -> None:
    """Refuse, before anything starts, a platform that cannot serve this connector (PROTOCOL.md §3.3)."""
    org_id = os.environ.get("MOLECULE_ORG_ID") or None
    token = tokens.token_for(input.workspace_id)
    try:
        event_loop.run(probe_platform(input.platform_url, input.workspace_id, token, org_id=org_id))
    except PlatformProbeError as err:
        raise UsageProblem(str(err)) from None


def _run_async(main: Callable[[], Awaitable[None]]) -> None:
    event_loop.run(main())


async def connect_client(**kwargs: Any) -> ConnectedClient:
    """``worker.temporal.connect_client`` with the project's data converter, for every command that connects.

    When ``MOLECULE_CODEC_KEYS`` is set, payloads are encrypted and decrypted with the codec (``worker.codec``);
    a malformed value is a ``CodecError`` (user error).
    """
    return await connect_temporal(data_converter=data_converter(), **kwargs)


async def _until_signalled(what: str) -> None:
    """Wait for SIGINT/SIGTERM, then arm a second-signal exit: the first stops gracefully, the second at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    announce(f"{what}; press Ctrl-C to stop the worker (connectors keep their state in Temporal)")
    await stop.wait()

    def exit_now() -> None:
        # Nothing is lost: Temporal times out this worker's activities and runs them elsewhere.
        announce("second signal: exiting now")
        os._exit(130)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, exit_now)
    announce("stopping: no new polls; in-flight dispatches may finish (signal again to exit now)...")


@dataclass(frozen=True)
class _Budget:
    """The ``--request-budget``/``--request-burst`` values of ``run`` and ``worker``."""

    per_min: float = DEFAULT_PER_MINUTE
    burst: int = DEFAULT_BURST
    shared: bool = True


async def _serve(
    task_queue: str,
    tokens: TokenStore,
    shutdown_grace: float,
    metrics_port: int | None,
    started: Callable[[Client], Awaitable[str]],
    budget: _Budget = _Budget(),
) -> None:
    """Connect, run a worker until signalled, then shut down within ``shutdown_grace`` seconds."""
    from worker.assemble import metrics_runtime, running_worker
    from worker.budget_share import SHARE_DIR
    from worker.settings import state_dir

    runtime = metrics_runtime(metrics_port) if metrics_port else None
    if metrics_port:
        announce(f"Prometheus metrics on http://0.0.0.0:{metrics_port}/metrics")
    connected = await connect_client(runtime=runtime)
    _print_ui(connected.ui_url)
    async with running_worker(
        connected.client,
        task_queue=task_queue,
        token_for=tokens.token_for,
        org_id=os.environ.get("MOLECULE_ORG_ID") or None,
        graceful_shutdown=timedelta(seconds=shutdown_grace),
        request_budget_per_min=budget.per_min,
        request_burst=budget.burst,
        budget_share_dir=state_dir() / SHARE_DIR if budget.shared else None,
    ):
        await _announce_budget(connected.client, task_queue, budget)
        await _until_signalled(await started(connected.client))
    announce("worker stopped")


async def _announce_budget(client: Client, task_queue: str, budget: _Budget) -> None:
    """Say at start-up how often inboxes will be read, and whether the budget can carry the task queue's connectors.

    Counts the running connectors on ``task_queue`` (Temporal visibility) as if this worker served them all.
    """
    from activities.planner import overload_advice, read_interval

    if budget.per_min <= 0:
        announce("request budget: unlimited (every inbox is read each poll_interval_s)")
        return
    query = f"WorkflowType = 'ConnectWorkflow' AND TaskQueue = '{task_queue}' AND ExecutionStatus = 'Running'"
    try:
        count = (await asyncio.wait_for(client.count_workflows(query), timeout=10)).count
    except Exception:  # noqa: BLE001 - a hint only: visibility may be slow or restricted
        return
    interval = read_interval(budget.per_min, count)
    scope = " (split with the other workers on this host)" if budget.shared else ""
    if interval is None:
        logging.getLogger(__name__).warning(
            "request budget overloaded: %s", overload_advice("", count, budget.per_min)
        )
    elif count:
        announce(
            f"request budget {budget.per_min:g}/min per platform{scope}: with {count} connector(s) on {task_queue}, "
            f"each inbox is read every {interval:.1f} s at a 1 s poll if this worker serves them all"
        )


def _print_ui(ui_url: str | None) -> None:
    if ui_url:
        announce(f"Temporal Web UI: {ui_url}")


def _configure_logging(log_format: str, log_level: str) -> None:
    try:
        configure_logging(log_format, log_level)
    except ValueError as err:
        raise UsageProblem(str(err)) from None


# --- commands ----------------------------------------------------------------------------------------------------


@app.command()
def run(
    workspace_id: Annotated[str, typer.Argument(help="The workspace to connect.")],
    platform_url: PlatformUrlOption = None,
    backend: BackendOption = "echo",
    option: BackendOptions = None,
    start_from: StartFromOption = "latest",
    no_probe: NoProbeOption = False,
    task_queue: TaskQueueOption = TASK_QUEUE,
    shutdown_grace: ShutdownGraceOption = 30.0,
    metrics_port: MetricsPortOption = None,
    log_format: LogFormatOption = "text",
    log_level: LogLevelOption = "INFO",
    request_budget: RequestBudgetOption = DEFAULT_PER_MINUTE,
    request_burst: RequestBurstOption = DEFAULT_BURST,
    shared_budget: SharedBudgetOption = True,
) -> None:
    """Run a worker and ensure the workspace's connector workflow; Ctrl-C stops the worker only.

    The token comes from $MOLECULE_WORKSPACE_TOKEN or $MOLECULE_TOKENS_FILE, never from the command line.
    """
    _configure_logging(log_format, log_level)
    input = _connect_input(workspace_id, platform_url, backend, option, start_from)
    tokens = _tokens_for(workspace_id)
    if not no_probe:
        _probe(input, tokens)

    async def started(client: Client) -> str:
        handle = await start_connector(client, input, task_queue=task_queue)
        return f"connector {handle.id} running on task queue {task_queue}"

    budget = _Budget(request_budget, request_burst, shared_budget)
    _run_async(lambda: _serve(task_queue, tokens, shutdown_grace, metrics_port, started, budget))


@app.command()
def worker(
    task_queue: TaskQueueOption = TASK_QUEUE,
    shutdown_grace: ShutdownGraceOption = 30.0,
    metrics_port: MetricsPortOption = None,
    log_format: LogFormatOption = "text",
    log_level: LogLevelOption = "INFO",
    request_budget: RequestBudgetOption = DEFAULT_PER_MINUTE,
    request_burst: RequestBurstOption = DEFAULT_BURST,
    shared_budget: SharedBudgetOption = True,
) -> None:
    """Run a worker only: it serves every connector on the task queue (fleets run many of these)."""
    _configure_logging(log_format, log_level)
    tokens = _tokens_for(None)

    async def started(client: Client) -> str:
        return f"worker running on task queue {task_queue}"

    budget = _Budget(request_budget, request_burst, shared_budget)
    _run_async(lambda: _serve(task_queue, tokens, shutdown_grace, metrics_port, started, budget))


@app.command()
def start(
    workspace_id: Annotated[str, typer.Argument(help="The workspace to connect.")],
    platform_url: PlatformUrlOption = None,
    backend: BackendOption = "echo",
    option: BackendOptions = None,
    start_from: StartFromOption = "latest",
    task_queue: TaskQueueOption = TASK_QUEUE,
) -> None:
    """Start the workspace's connector workflow (idempotent) without running a worker."""
    input = _connect_input(workspace_id, platform_url, backend, option, start_from)

    async def main() -> None:
        connected = await connect_client()
        handle = await start_connector(connected.client, input, task_queue=task_queue)
        print(handle.id)

    _run_async(main)


def format_backends(infos: dict[str, BackendInfo]) -> str:
    """A human-readable listing of backends: name, origin and summary, then each option with default and help."""
    lines: list[str] = []
    for info in infos.values():
        lines.append(f"{info.name} ({info.origin})" + (f": {info.summary}" if info.summary else ""))
        if info.load_error is not None:
            lines.append(f"  cannot be loaded: {info.load_error}")
        elif not info.options:
            lines.append("  (no options declared)")
        for option in info.options:
            value = "<required>" if option.required else "<unset>" if option.default is None else option.default or "''"
            lines.append(f"  -o {option.name}={value}")
            help_text = " ".join(option.help.split())
            lines += textwrap.wrap(help_text, width=112, initial_indent=" " * 7, subsequent_indent=" " * 7)
        lines.append("")
    return "\n".join(lines).rstrip("\n")


@app.command("backends")
def backends_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the backends as a JSON array.")] = False,
) -> None:
    """List the backends this worker can run (built-ins and plugins) with their -o options and defaults."""
    infos = available_backends()
    if as_json:
        print(orjson.dumps([info.model_dump() for info in infos.values()], option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_backends(infos))


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
    """An aligned table, one connector a line; a connector whose query failed shows ``?`` and the error."""
    lines = [TABLE_COLUMNS]
    for row in rows:
        s = row.status
        if s is None:
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


def _print_rows(rows: list[control.ConnectorRow], as_json: bool) -> None:
    """Print rows as the table, or as a JSON list of ``{workspace_id, workflow_id, error, status}``."""
    if as_json:
        listing = [
            {
                "workspace_id": row.workspace_id,
                "workflow_id": workflow_id(row.workspace_id),
                "error": row.error,
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
        _print_rows(await control.connector_rows(client, workspace_ids, timeout=timedelta(seconds=timeout)), as_json)

    _run_async(main)


@app.command()
def status(
    workspace_id: Annotated[
        str | None, typer.Argument(help="The workspace whose connector to query; all running ones when omitted.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full status as JSON (a list for all).")] = False,
    task_queue: Annotated[
        str | None, typer.Option("--task-queue", help="Without WORKSPACE_ID: only connectors on this task queue.")
    ] = None,
    timeout: QueryTimeoutOption = 5.0,
) -> None:
    """Show a connector's phase, cursor, lanes, in-flight messages and dead letters (the ``status`` query).

    Without WORKSPACE_ID: every running connector (from Temporal visibility) as a table, queried concurrently.
    """
    if workspace_id is None:
        _status_of_all(task_queue, timeout, as_json)
        return

    async def main() -> None:
        connected = await connect_client()
        result = await connector_status(connected.client, workspace_id)
        if as_json:
            print(orjson.dumps(result.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
        else:
            print(format_status(result))

    _run_async(main)


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

    _run_async(main)


@app.command()
def pause(workspace_id: WorkspaceArg) -> None:
    """Stop polling and dispatching; returns once in-flight messages settled (the `pause` update)."""
    _control(lambda c: control.pause_connector(c, workspace_id))


@app.command()
def resume(workspace_id: WorkspaceArg) -> None:
    """Resume a paused connector (the `resume` update)."""
    _control(lambda c: control.resume_connector(c, workspace_id))


@app.command()
def drain(workspace_id: WorkspaceArg) -> None:
    """Deliver what was fetched, then complete the connector workflow (the `drain` update)."""
    _control(lambda c: control.drain_connector(c, workspace_id))


@app.command()
def cursor(
    workspace_id: WorkspaceArg,
    set_: Annotated[str | None, typer.Option("--set", help="Continue polling after this row id (UUID).")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="Skip to the newest row.")] = False,
) -> None:
    """Move the inbox cursor (the `set_cursor` update); settled messages are never redelivered."""
    if (set_ is None) == (not latest):
        raise UsageProblem("give exactly one of --set ROW_ID or --latest")
    row_id = "latest" if latest else str(set_)
    _control(lambda c: control.set_cursor(c, workspace_id, row_id))


@app.command("dead-letters")
def dead_letters(
    workspace_id: WorkspaceArg,
    redrive_id: Annotated[
        str | None, typer.Option("--redrive", help="Redrive the dead letter with this row id.")
    ] = None,
    redrive_all: Annotated[bool, typer.Option("--all", help="With no --redrive/--discard id: redrive all.")] = False,
    discard_id: Annotated[
        str | None, typer.Option("--discard", help="Forget the dead letter with this row id.")
    ] = None,
) -> None:
    """List dead letters, or redrive / discard them (the `redrive` and `discard` updates)."""
    if sum(x is not None and x is not False for x in (redrive_id, discard_id, redrive_all or None)) > 1:
        raise UsageProblem("give one of --redrive ROW_ID, --all or --discard ROW_ID")

    def render_action(result: Any) -> None:
        print(f"{result.count} dead letter(s): {', '.join(result.row_ids) or '-'}")

    def render_list(result: StatusResult) -> None:
        if not result.dead_letters:
            print("no dead letters")
        for letter in result.dead_letters:
            print(f"{letter.row_id}  [{letter.stage}, {letter.attempts} attempt(s)]  {letter.lane}  {letter.error}")

    if redrive_id or redrive_all:
        _control(lambda c: control.redrive(c, workspace_id, redrive_id), render_action)
    elif discard_id:
        _control(lambda c: control.discard(c, workspace_id, discard_id), render_action)
    else:
        _control(lambda c: connector_status(c, workspace_id), render_list)


@app.command()
def configure(
    workspace_id: WorkspaceArg,
    settings: Annotated[list[str], typer.Argument(help="KEY=VALUE settings, e.g. max_concurrency=8.")],
) -> None:
    """Change a running connector's settings (the `configure` update); values are JSON or plain strings."""
    changes: dict[str, object] = {}
    for key, value in _parse_options(settings).items():
        try:
            changes[key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            changes[key] = value
    _control(lambda c: control.configure(c, workspace_id, changes))


fleet_app = typer.Typer(
    help="Fleets: many connectors declared in one TOML file, applied idempotently.", no_args_is_help=True
)
app.add_typer(fleet_app, name="fleet")

FleetFileArg = Annotated[Path, typer.Argument(help="Fleet file: TOML with [defaults] and [[workspace]] tables.")]


def _load_fleet(path: Path) -> Any:
    from worker.fleet import FleetFileError, load_fleet

    try:
        return load_fleet(path)
    except FleetFileError as err:
        raise UsageProblem(str(err)) from None


@fleet_app.command("apply")
def fleet_apply(
    file: FleetFileArg,
    prune: Annotated[
        bool, typer.Option("--prune", help="Drain running connectors on the task queue that FILE does not list.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
    task_queue: TaskQueueOption = TASK_QUEUE,
    timeout: QueryTimeoutOption = 5.0,
) -> None:
    """Start missing connectors and configure changed ones, one line per workspace (idempotent).

    Exits 1 when a workspace could not be read or changed, or needs a restart (backend or platform URL changed).
    """
    from worker import fleet

    loaded = _load_fleet(file)

    async def main() -> int:
        try:
            await fleet.check_backends(loaded)
        except fleet.FleetFileError as err:
            raise UsageProblem(str(err)) from None
        client = (await connect_client()).client
        steps = await fleet.plan(client, loaded, task_queue=task_queue, prune=prune, timeout=timedelta(seconds=timeout))
        outcomes = [None] * len(steps) if dry_run else await fleet.apply(client, steps, task_queue=task_queue)
        for step, error in zip(steps, outcomes, strict=True):
            print(step.describe() + (f": failed: {error}" if error else ""))
        if dry_run:
            print("dry run: nothing changed", file=sys.stderr)
        return sum(1 for step, error in zip(steps, outcomes, strict=True) if error or step.kind in ("error", "restart"))

    if event_loop.run(main()):
        raise SystemExit(1)


@fleet_app.command("status")
def fleet_status(
    file: FleetFileArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
    timeout: QueryTimeoutOption = 5.0,
) -> None:
    """Show the connector table for the workspaces FILE lists (one status query each, concurrently)."""
    loaded = _load_fleet(file)

    async def main() -> None:
        client = (await connect_client()).client
        rows = await control.connector_rows(client, loaded.workspace_ids, timeout=timedelta(seconds=timeout))
        _print_rows(rows, as_json)

    _run_async(main)


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

    _run_async(main)


@app.command("codec-server")
def codec_server(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8081,
    host: Annotated[str, typer.Option(help="Address to bind; anyone who reaches it can decrypt.")] = "127.0.0.1",
    cors_origin: Annotated[
        list[str] | None,
        typer.Option("--cors-origin", help="Web UI origin allowed to call it (repeatable; default: :8233)."),
    ] = None,
) -> None:
    """Serve the Temporal Web UI codec endpoint (/encode, /decode) with the keys of $MOLECULE_CODEC_KEYS."""
    from worker.codec import DEFAULT_CORS_ORIGINS, KEYS_ENV, codec_from_env, serve_codec

    codec = codec_from_env()
    if codec is None:
        raise UsageProblem(f"{KEYS_ENV} is not set: export the keys the workers use (keyid:base64key,...)")
    origins = cors_origin or list(DEFAULT_CORS_ORIGINS)
    print(
        f"codec server on http://{host}:{port} for {', '.join(origins)}; set it as the codec endpoint in the Web UI",
        file=sys.stderr,
    )
    serve_codec(codec, host=host, port=port, cors_origins=origins)


dev_platform_app = typer.Typer(
    help="Run a local Molecule platform (FastAPI + SQLite) for trying and testing connectors.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(dev_platform_app, name="dev-platform")


@dev_platform_app.callback()
def dev_platform(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    db: Annotated[Path | None, typer.Option(help="SQLite file (default: dev-platform.db in the state dir).")] = None,
    admin_token: Annotated[str, typer.Option("--admin-token", help="Bearer of the admin API and canvas sender.")] = (
        "dev-admin"
    ),
) -> None:
    """Serve the local platform (when no subcommand is given)."""
    if ctx.invoked_subcommand is not None:
        return
    from devplatform.server import serve
    from devplatform.settings import PlatformSettings
    from worker.settings import state_dir

    db_path = db if db is not None else state_dir() / "dev-platform.db"
    print(f"dev platform on http://{host}:{port} (db {db_path}, admin token from --admin-token)", file=sys.stderr)
    serve(PlatformSettings(db_path=db_path, admin_token=admin_token), host=host, port=port)


@dev_platform_app.command("create-workspace")
def create_workspace(
    platform_url: Annotated[
        str, typer.Option("--platform-url", envvar="MOLECULE_API_URL", help="The dev platform's URL.")
    ] = "http://127.0.0.1:8080",
    name: Annotated[str, typer.Option(help="Workspace name.")] = "external-agent",
    admin_token: Annotated[str, typer.Option("--admin-token", help="The dev platform's admin token.")] = "dev-admin",
) -> None:
    """Create an external (poll-mode) workspace and print {"id": ..., "token": ...} as JSON."""
    import httpx

    from devplatform.client import PlatformAdmin

    try:
        with PlatformAdmin(platform_url, admin_token=admin_token) as admin:
            created = admin.create_workspace(name)
    except httpx.HTTPError as err:
        raise UsageProblem(f"cannot create a workspace at {platform_url}: {err}; is `dev-platform` running?") from None
    print(orjson.dumps({"id": created.id, "token": created.token}).decode())


@app.command()
def demo(
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 110.0,
) -> None:
    """Run the whole thing locally: embedded Temporal, a dev platform, a worker and a connected echo workspace."""
    from worker.demo import run_demo

    event_loop.run(run_demo(timeout_s=timeout))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors into one line and exit code 2.

    As the process entry point (``argv`` None) it ends the process with ``os._exit``: the Temporal SDK's Rust
    threads can abort interpreter shutdown ("Fatal Python error: PyGILState_Release", temporalio/sdk-python#300),
    which would turn exit code 0 or 2 into a SIGABRT. Callers passing ``argv`` (tests) get ``SystemExit`` instead.
    """
    if argv is not None:
        _main(argv)
        return
    try:
        _main(None)
        code: object = 0
    except SystemExit as err:
        code = err.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def _main(argv: list[str] | None) -> None:
    try:
        # Without standalone mode an Exit (e.g. after --help) is returned as its code instead of raised.
        code = app(args=argv, standalone_mode=False)
    except typer.Exit as err:
        raise SystemExit(err.exit_code) from None
    except typer.Abort:
        raise SystemExit(130) from None
    except getattr(click_exceptions, "NoArgsIsHelpError", ()) as err:
        err.show()
        raise SystemExit(USER_ERROR_EXIT) from None
    except click_exceptions.UsageError as err:
        hint = f" (see `{err.ctx.command_path} --help`)" if err.ctx else " (see --help)"
        _fail(err.format_message().replace("\n", " ") + hint)
    except click_exceptions.ClickException as err:
        _fail(err.format_message().replace("\n", " "))
    except ValidationError as err:
        _fail(_first_validation_error(err))
    except USER_ERRORS as err:
        _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
