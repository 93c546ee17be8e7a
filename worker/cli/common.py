"""What every command group of the CLI shares: options, user errors, connecting, serving a worker.

Every user error raises :class:`UsageProblem` (or another of :data:`USER_ERRORS`); ``worker.cli.main`` prints it as
one line on stderr and exits 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from temporalio.client import Client

from activities.backends import create_backend
from activities.backends.base import BackendConfigError
from activities.budget import DEFAULT_BURST, DEFAULT_PER_MINUTE
from activities.messages import BackendSpec, ColdStart
from activities.probe import PlatformProbeError, probe_platform
from worker import loop as event_loop
from worker.codec import CodecError, data_converter
from worker.control import ConnectorError
from worker.logs import LOG_FORMAT_ENV, LOG_LEVEL_ENV, announce, configure_logging
from worker.secrets import TokenError, TokenStore
from worker.temporal import ConnectedClient, TemporalConnectError
from worker.temporal import connect_client as connect_temporal
from workflows.messages import ConnectInput, ConnectSettings

USER_ERROR_EXIT = 2
NO_ANSWER_EXIT = 1
"""Exit code when no worker answered a connector control in time (``worker.control.NoAnswerError``)."""


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
TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout",
        help="Seconds to wait for a worker's answer to each query or update; then exit 1 saying whether any worker "
        "polls the connector's task queue.",
        min=0.1,
    ),
]
DEFAULT_TIMEOUT = 10.0
"""Default of ``--timeout`` (seconds)."""
NoProbeOption = Annotated[
    bool, typer.Option("--no-probe", help="Skip the startup check that the platform supports poll mode's cursor.")
]


def fail(message: str, code: int = USER_ERROR_EXIT) -> NoReturn:
    """Print ``molecule-connect: <message>`` on stderr and exit with ``code`` (:data:`USER_ERROR_EXIT`)."""
    print(f"molecule-connect: {message}", file=sys.stderr)
    raise SystemExit(code)


def first_validation_error(err: ValidationError) -> str:
    """The first error of a pydantic validation failure as one line: ``invalid <field>: <reason>``."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"invalid {where or 'value'}: {first.get('msg', 'invalid')}"


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` as a dict; raises :class:`UsageProblem` for a pair without ``=`` or with an empty key."""
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageProblem(f"option {pair!r} is not KEY=VALUE: write e.g. -o cmd='tr a-z A-Z'")
        options[key.strip()] = value
    return options


def connect_input(
    workspace_id: str, platform_url: str | None, backend: str, options: list[str] | None, start_from: str | None
) -> tuple[ConnectInput, frozenset[str]]:
    """The ``ConnectInput`` of ``run``/``start``, with the backend built once to check its options.

    Returns:
        The input, and the ``ConnectSettings`` fields the command line set explicitly (``start_from`` when
        ``--start-from`` was given): only those are compared with a running connector's settings.
    """
    if not platform_url:
        raise UsageProblem("no platform URL: pass --platform-url URL or set MOLECULE_API_URL")
    if start_from not in (None, "latest", "backlog"):
        raise UsageProblem(f"--start-from must be 'latest' or 'backlog', not {start_from!r}")
    spec = BackendSpec(name=backend, options=parse_options(options))
    check_backend(spec)
    start: ColdStart = "backlog" if start_from == "backlog" else "latest"
    input = ConnectInput(
        workspace_id=workspace_id,
        platform_url=platform_url,
        backend=spec,
        settings=ConnectSettings(start_from=start),
    )
    return input, frozenset({"start_from"} if start_from is not None else ())


def check_backend(spec: BackendSpec) -> None:
    """Build the backend once, so a misconfiguration fails here rather than in every dispatch."""
    backend = create_backend(spec.name, spec.options)
    with contextlib.suppress(Exception):
        event_loop.run(backend.close())


def tokens_for(workspace_id: str | None) -> TokenStore:
    """The worker's token store from the environment, checked (and holding ``workspace_id``'s token if given).

    ``MOLECULE_WORKSPACE_TOKEN`` belongs to ``MOLECULE_WORKSPACE_ID``, else to ``workspace_id`` (``run``); a
    ``worker`` (``workspace_id`` None) given the variable without ``MOLECULE_WORKSPACE_ID`` is refused.
    """
    tokens = TokenStore.from_env(workspace_id=workspace_id)
    tokens.validate()
    if workspace_id is not None:
        tokens.token_for(workspace_id)
    return tokens


def probe(input: ConnectInput, tokens: TokenStore) -> None:
    """Refuse, before anything starts, a platform that cannot serve this connector (PROTOCOL.md §3.3)."""
    org_id = os.environ.get("MOLECULE_ORG_ID") or None
    token = tokens.token_for(input.workspace_id)
    try:
        event_loop.run(probe_platform(input.platform_url, input.workspace_id, token, org_id=org_id))
    except PlatformProbeError as err:
        raise UsageProblem(str(err)) from None


def run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` on the project's event loop (``worker.loop``)."""
    event_loop.run(main())


async def connect_client(**kwargs: Any) -> ConnectedClient:
    """``worker.temporal.connect_client`` with the project's data converter, for every command that connects.

    When ``MOLECULE_CODEC_KEYS`` is set, payloads are encrypted and decrypted with the codec (``worker.codec``);
    a malformed value is a ``CodecError`` (user error).
    """
    return await connect_temporal(data_converter=data_converter(), **kwargs)


async def until_signalled(what: str) -> None:
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
class Budget:
    """The ``--request-budget``/``--request-burst`` values of ``run`` and ``worker``."""

    per_min: float = DEFAULT_PER_MINUTE
    burst: int = DEFAULT_BURST


@dataclass(frozen=True)
class WorkerOptions:
    """How ``run`` and ``worker`` run their worker: tokens, shutdown grace, request budget."""

    tokens: TokenStore
    shutdown_grace: float = 30.0
    budget: Budget = Budget()


async def connect_worker_client(metrics_port: int | None) -> ConnectedClient:
    """Connect for a worker process: with the metrics runtime when ``metrics_port`` is set; announce the Web UI."""
    from worker.assemble import metrics_runtime

    runtime = metrics_runtime(metrics_port) if metrics_port else None
    if metrics_port:
        announce(f"Prometheus metrics on http://0.0.0.0:{metrics_port}/metrics")
    connected = await connect_client(runtime=runtime)
    print_ui(connected.ui_url)
    return connected


@contextlib.asynccontextmanager
async def serving(client: Client, task_queue: str, options: WorkerOptions) -> AsyncIterator[None]:
    """Run a worker on ``task_queue`` for the block; leaving it shuts down within ``options.shutdown_grace``."""
    from worker.assemble import running_worker

    async with running_worker(
        client,
        task_queue=task_queue,
        token_for=options.tokens.token_for,
        org_id=os.environ.get("MOLECULE_ORG_ID") or None,
        graceful_shutdown=timedelta(seconds=options.shutdown_grace),
        request_budget_per_min=options.budget.per_min,
        request_burst=options.budget.burst,
    ):
        yield


async def serve_worker(
    task_queue: str,
    options: WorkerOptions,
    metrics_port: int | None,
    started: Callable[[Client], Awaitable[str]],
) -> None:
    """Connect, run a worker until signalled, then shut down within ``shutdown_grace`` seconds."""
    connected = await connect_worker_client(metrics_port)
    async with serving(connected.client, task_queue, options):
        await until_signalled(await started(connected.client))
    announce("worker stopped")


def print_ui(ui_url: str | None) -> None:
    """Announce the Temporal Web UI's URL, when the server has one."""
    if ui_url:
        announce(f"Temporal Web UI: {ui_url}")


def setup_logging(log_format: str, log_level: str) -> None:
    """``worker.logs.configure_logging``, with a bad format or level as a :class:`UsageProblem`."""
    try:
        configure_logging(log_format, log_level)
    except ValueError as err:
        raise UsageProblem(str(err)) from None
