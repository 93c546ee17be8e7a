"""Commands that run a worker or start a connector: ``run``, ``worker``, ``start``."""

from __future__ import annotations

from typing import Annotated

import typer
from temporalio.client import Client

from activities.budget import DEFAULT_BURST, DEFAULT_PER_MINUTE
from worker.cli.common import (
    BackendOption,
    BackendOptions,
    Budget,
    LogFormatOption,
    LogLevelOption,
    MetricsPortOption,
    NoProbeOption,
    PlatformUrlOption,
    RequestBudgetOption,
    RequestBurstOption,
    ShutdownGraceOption,
    StartFromOption,
    TaskQueueOption,
    connect_client,
    connect_input,
    probe,
    run_async,
    serve_worker,
    setup_logging,
    tokens_for,
)
from worker.control import start_connector
from worker.settings import TASK_QUEUE

app = typer.Typer()


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
) -> None:
    """Run a worker and ensure the workspace's connector workflow; Ctrl-C stops the worker only.

    The token comes from $MOLECULE_WORKSPACE_TOKEN or $MOLECULE_TOKENS_FILE, never from the command line.
    """
    setup_logging(log_format, log_level)
    input = connect_input(workspace_id, platform_url, backend, option, start_from)
    tokens = tokens_for(workspace_id)
    if not no_probe:
        probe(input, tokens)

    async def started(client: Client) -> str:
        handle = await start_connector(client, input, task_queue=task_queue)
        return f"connector {handle.id} running on task queue {task_queue}"

    budget = Budget(request_budget, request_burst)
    run_async(lambda: serve_worker(task_queue, tokens, shutdown_grace, metrics_port, started, budget))


@app.command()
def worker(
    task_queue: TaskQueueOption = TASK_QUEUE,
    shutdown_grace: ShutdownGraceOption = 30.0,
    metrics_port: MetricsPortOption = None,
    log_format: LogFormatOption = "text",
    log_level: LogLevelOption = "INFO",
    request_budget: RequestBudgetOption = DEFAULT_PER_MINUTE,
    request_burst: RequestBurstOption = DEFAULT_BURST,
) -> None:
    """Run a worker only: it serves every connector on the task queue (fleets run many of these)."""
    setup_logging(log_format, log_level)
    tokens = tokens_for(None)

    async def started(client: Client) -> str:
        return f"worker running on task queue {task_queue}"

    budget = Budget(request_budget, request_burst)
    run_async(lambda: serve_worker(task_queue, tokens, shutdown_grace, metrics_port, started, budget))


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
    input = connect_input(workspace_id, platform_url, backend, option, start_from)

    async def main() -> None:
        connected = await connect_client()
        handle = await start_connector(connected.client, input, task_queue=task_queue)
        print(handle.id)

    run_async(main)
