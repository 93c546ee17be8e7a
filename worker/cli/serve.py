"""Commands that run a worker or start a connector: ``run``, ``worker``, ``start``.

``run`` and ``start`` are honest about a connector that already runs (``worker.control.plan_start``): the same
definition is reused, settings given on the command line are applied with ``configure``, and a different platform
URL, backend or task queue is refused with what differs, unless ``--replace`` drains the old connector and starts
the new definition with its state.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Annotated

import typer
from temporalio.client import Client

from activities.budget import DEFAULT_BURST, DEFAULT_PER_MINUTE
from worker import control
from worker.cli.common import (
    DEFAULT_METRICS_HOST,
    DEFAULT_TIMEOUT,
    BackendOption,
    BackendOptions,
    Budget,
    LeaseTimeoutOption,
    LogFormatOption,
    LogLevelOption,
    MetricsHostOption,
    MetricsPortOption,
    NoProbeOption,
    PlatformUrlOption,
    RequestBudgetOption,
    RequestBurstOption,
    SharedBudgetOption,
    ShutdownGraceOption,
    TaskQueueOption,
    TimeoutOption,
    WorkerOptions,
    connect_client,
    connect_input,
    connect_worker_client,
    connection_options,
    probe,
    run_async,
    serve_worker,
    serving,
    setup_logging,
    tokens_for,
    until_signalled,
)
from worker.logs import announce
from worker.settings import TASK_QUEUE, run_task_queue
from workflows.lease import LEASE_TIMEOUT_S

app = typer.Typer()

StartFromOption = Annotated[
    str | None,
    typer.Option(
        "--start-from",
        help="Cold start: 'latest' (deliver nothing old; the default) or 'backlog' (oldest first). Given for a "
        "running connector, it is applied with configure.",
    ),
]
RunTaskQueueOption = Annotated[
    str | None,
    typer.Option(
        "--task-queue",
        envvar="MOLECULE_TASK_QUEUE",
        help="Task queue of the connector. Default: molecule-connect.<WORKSPACE_ID>, a queue of its own, so any "
        "number of `run`s share one Temporal without touching each other. Give a fleet's shared queue (e.g. "
        "molecule-connect) to serve it from `worker`s instead: every worker on it then needs this workspace's token. "
        "A connector already running elsewhere is served where it runs.",
        show_default=False,
    ),
]
StartTaskQueueOption = Annotated[
    str | None,
    typer.Option(
        "--task-queue",
        envvar="MOLECULE_TASK_QUEUE",
        help=f"Task queue of a new connector (default: {TASK_QUEUE}, the `worker` default); a running one is kept "
        "where it runs unless this is given.",
        show_default=False,
    ),
]
ReplaceOption = Annotated[
    bool,
    typer.Option(
        "--replace",
        help="When the connector runs with another platform URL, backend or task queue: drain it (it delivers what "
        "it fetched), wait for it to complete, and start this definition with its cursor, dedupe windows, dead "
        "letters and counters. Also carries the state of a connector drained before.",
    ),
]


def _start_line(outcome: control.StartOutcome, default_task_queue: str) -> str:
    line = outcome.describe()
    if outcome.moved:
        line += f"; to move it: --task-queue {default_task_queue} --replace"
    return line


@app.command()
@connection_options
def run(
    workspace_id: Annotated[str, typer.Argument(help="The workspace to connect.")],
    platform_url: PlatformUrlOption = None,
    backend: BackendOption = "echo",
    option: BackendOptions = None,
    start_from: StartFromOption = None,
    no_probe: NoProbeOption = False,
    task_queue: RunTaskQueueOption = None,
    replace: ReplaceOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    shutdown_grace: ShutdownGraceOption = 30.0,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = DEFAULT_METRICS_HOST,
    log_format: LogFormatOption = "text",
    log_level: LogLevelOption = "INFO",
    request_budget: RequestBudgetOption = DEFAULT_PER_MINUTE,
    request_burst: RequestBurstOption = DEFAULT_BURST,
    shared_budget: SharedBudgetOption = True,
) -> None:
    """Run a worker for one workspace and ensure its connector workflow; Ctrl-C stops the worker only.

    The connector gets a task queue of its own (molecule-connect.<WORKSPACE_ID>) and this worker serves only it:
    several `run`s for several workspaces never take each other's work. To serve the workspace from a fleet's
    `worker`s instead, give their --task-queue.

    The token comes from $MOLECULE_WORKSPACE_TOKEN (this workspace's, or the one $MOLECULE_WORKSPACE_ID names) or
    $MOLECULE_TOKENS_FILE, never from the command line.
    """
    setup_logging(log_format, log_level)
    input, fields = connect_input(workspace_id, platform_url, backend, option, start_from)
    tokens = tokens_for(workspace_id)
    if not no_probe:
        probe(input, tokens)
    options = WorkerOptions(tokens, shutdown_grace, Budget(request_budget, request_burst, shared_budget))
    limit = timedelta(seconds=timeout)

    async def main() -> None:
        client = (await connect_worker_client(metrics_port, metrics_host)).client
        plan = await control.plan_start(
            client,
            input,
            task_queue=task_queue,
            default_task_queue=run_task_queue(workspace_id),
            replace=replace,
            timeout=limit,
        )
        if plan.action == "replace" and plan.old_task_queue not in (None, plan.task_queue):
            # The old connector is served on its own task queue until it has drained.
            assert plan.old_task_queue is not None
            async with serving(client, plan.old_task_queue, options):
                carried = await control.drain_and_wait(client, workspace_id, timeout=limit, drain_timeout=limit)
            plan = dataclasses.replace(plan, carried=carried)
        async with serving(client, plan.task_queue, options):
            outcome = await control.carry_out_start(
                client, input, plan, settings_fields=fields, timeout=limit, drain_timeout=limit
            )
            await until_signalled(_start_line(outcome, run_task_queue(workspace_id)))
        announce("worker stopped")

    run_async(main)


@app.command()
@connection_options
def worker(
    task_queue: TaskQueueOption = TASK_QUEUE,
    shutdown_grace: ShutdownGraceOption = 30.0,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = DEFAULT_METRICS_HOST,
    log_format: LogFormatOption = "text",
    log_level: LogLevelOption = "INFO",
    request_budget: RequestBudgetOption = DEFAULT_PER_MINUTE,
    request_burst: RequestBurstOption = DEFAULT_BURST,
    shared_budget: SharedBudgetOption = True,
    lease_timeout: LeaseTimeoutOption = LEASE_TIMEOUT_S,
) -> None:
    """Run a worker only: it serves every connector on the task queue (fleets run many of these).

    Every worker on a task queue may run any connector's activities on it, so it needs the tokens of all their
    workspaces: $MOLECULE_TOKENS_FILE. $MOLECULE_WORKSPACE_TOKEN is one workspace's token: it needs
    $MOLECULE_WORKSPACE_ID to say which. The worker holds a liveness lease (--lease-timeout), so when it dies the
    other workers on the queue take over its workspaces within seconds.
    """
    setup_logging(log_format, log_level)
    options = WorkerOptions(
        tokens_for(None),
        shutdown_grace,
        Budget(request_budget, request_burst, shared_budget),
        lease_timeout_s=lease_timeout or None,
    )

    async def started(client: Client) -> str:
        return f"worker running on task queue {task_queue}"

    run_async(lambda: serve_worker(task_queue, options, (metrics_port, metrics_host), started))


@app.command()
@connection_options
def start(
    workspace_id: Annotated[str, typer.Argument(help="The workspace to connect.")],
    platform_url: PlatformUrlOption = None,
    backend: BackendOption = "echo",
    option: BackendOptions = None,
    start_from: StartFromOption = None,
    task_queue: StartTaskQueueOption = None,
    replace: ReplaceOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Start the workspace's connector workflow without running a worker; print its workflow id.

    Idempotent: the same definition is reused. For a running connector, --start-from is applied with configure
    (a worker must answer), and another platform URL, backend or --task-queue is refused unless --replace.
    """
    input, fields = connect_input(workspace_id, platform_url, backend, option, start_from)
    limit = timedelta(seconds=timeout)

    async def main() -> None:
        client = (await connect_client()).client
        plan = await control.plan_start(
            client, input, task_queue=task_queue, default_task_queue=TASK_QUEUE, replace=replace, timeout=limit
        )
        outcome = await control.carry_out_start(
            client, input, plan, settings_fields=fields, timeout=limit, drain_timeout=limit
        )
        announce(_start_line(outcome, TASK_QUEUE))
        print(outcome.workflow_id)

    run_async(main)
