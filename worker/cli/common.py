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
from collections.abc import Awaitable, Callable
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
QueryTimeoutOption = Annotated[
    float, typer.Option("--timeout", help="Seconds each connector's status query may take.", min=0.1)
]
NoProbeOption = Annotated[
    bool, typer.Option("--no-probe", help="Skip the startup check that the platform supports poll mode's cursor.")
]


def fail(message: str) -> NoReturn:
    """Print ``molecule-connect: <message>`` on stderr and exit with :data:`USER_ERROR_EXIT`."""
    print(f"molecule-connect: {message}", file=sys.stderr)
    raise SystemExit(USER_ERROR_EXIT)


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
    workspace_id: str, platform_url: str | None, backend: str, options: list[str] | None, start_from: str
) -> ConnectInput:
    """The ``ConnectInput`` of ``run``/``start``, with the backend built once to check its options."""
    if not platform_url:
        raise UsageProblem("no platform URL: pass --platform-url URL or set MOLECULE_API_URL")
    if start_from not in ("latest", "backlog"):
        raise UsageProblem(f"--start-from must be 'latest' or 'backlog', not {start_from!r}")
    spec = BackendSpec(name=backend, options=parse_options(options))
    check_backend(spec)
    start: ColdStart = "latest" if start_from == "latest" else "backlog"
    return ConnectInput(
        workspace_id=workspace_id,
        platform_url=platform_url,
        backend=spec,
        settings=ConnectSettings(start_from=start),
    )


def check_backend(spec: BackendSpec) -> None:
    """Build the backend once, so a misconfiguration fails here rather than in every dispatch."""
    backend = create_backend(spec.name, spec.options)
    with contextlib.suppress(Exception):
        event_loop.run(backend.close())


def tokens_for(workspace_id: str | None) -> TokenStore:
    """The worker's token store from the environment, checked (and holding ``workspace_id``'s token if given)."""
    tokens = TokenStore.from_env()
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


def run_async(main: Callable[[], Awaitable[None]]) -> None:
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


async def serve_worker(
    task_queue: str,
    tokens: TokenStore,
    shutdown_grace: float,
    metrics_port: int | None,
    started: Callable[[Client], Awaitable[str]],
    budget: Budget = Budget(),
) -> None:
    """Connect, run a worker until signalled, then shut down within ``shutdown_grace`` seconds."""
    from worker.assemble import metrics_runtime, running_worker

    runtime = metrics_runtime(metrics_port) if metrics_port else None
    if metrics_port:
        announce(f"Prometheus metrics on http://0.0.0.0:{metrics_port}/metrics")
    connected = await connect_client(runtime=runtime)
    print_ui(connected.ui_url)
    async with running_worker(
        connected.client,
        task_queue=task_queue,
        token_for=tokens.token_for,
        org_id=os.environ.get("MOLECULE_ORG_ID") or None,
        graceful_shutdown=timedelta(seconds=shutdown_grace),
        request_budget_per_min=budget.per_min,
        request_burst=budget.burst,
    ):
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
