"""What every command group of the CLI shares: options, user errors, connecting, serving a worker.

Every user error raises :class:`UsageProblem` (or another of :data:`USER_ERRORS`); ``worker.cli.main`` prints it as
one line on stderr and exits 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Annotated, Any, NoReturn, TypeVar

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
from worker.temporal import ConnectedClient, TemporalConnectError, is_configured
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
MetricsHostOption = Annotated[
    str,
    typer.Option(
        "--metrics-host", help="Address the metrics endpoint listens on (0.0.0.0: every interface, for a scraper)."
    ),
]
DEFAULT_METRICS_HOST = "127.0.0.1"
"""Metrics listen on loopback unless ``--metrics-host`` says otherwise: they name every workspace of the worker."""
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
LeaseTimeoutOption = Annotated[
    float,
    typer.Option(
        "--lease-timeout",
        envvar="MOLECULE_LEASE_TIMEOUT",
        help="Hold a liveness lease heartbeated within this many seconds: when this worker dies, its workspaces "
        "move to another worker within about this plus 2 s (costs ~3600/(0.8 × this) actions an hour per worker). "
        "0: no lease; they move after their session's heartbeat timeout (failover_timeout_s, 36 s).",
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
    """Refuse, before anything starts, a platform that cannot serve this connector (docs/protocol.md §3.3)."""
    org_id = os.environ.get("MOLECULE_ORG_ID") or None
    token = tokens.token_for(input.workspace_id)
    try:
        event_loop.run(probe_platform(input.platform_url, input.workspace_id, token, org_id=org_id))
    except PlatformProbeError as err:
        raise UsageProblem(str(err)) from None


def run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` on the project's event loop (``worker.loop``)."""
    event_loop.run(main())


# --- connection flags, like the `temporal` CLI's ---------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionFlags:
    """The connection flags of a command (:func:`connection_options`), named like the ``temporal`` CLI's.

    Each flag stands for the ``TEMPORAL_*`` variable of ``temporalio.envconfig`` in :data:`FLAG_VARIABLES`, so a
    flag overrides the environment, which overrides the profile, exactly as the ``temporal`` CLI layers them.

    Attributes:
        address: ``--address``: gRPC ``host:port`` (``TEMPORAL_ADDRESS``).
        namespace: ``--namespace``/``-n`` (``TEMPORAL_NAMESPACE``).
        profile: ``--profile``: a profile of the client config file (``TEMPORAL_PROFILE``).
        tls_cert_path: ``--tls-cert-path``: client certificate for mTLS (``TEMPORAL_TLS_CLIENT_CERT_PATH``).
        tls_key_path: ``--tls-key-path``: its private key (``TEMPORAL_TLS_CLIENT_KEY_PATH``).
        tls_ca_path: ``--tls-ca-path``: server CA certificate (``TEMPORAL_TLS_SERVER_CA_CERT_PATH``).
        tls_server_name: ``--tls-server-name``: override the TLS server name (``TEMPORAL_TLS_SERVER_NAME``).
        api_key_env: ``--api-key-env``: the NAME of the variable holding the API key (its value becomes
            ``TEMPORAL_API_KEY``); the key itself never appears on a command line.
    """

    address: str | None = None
    namespace: str | None = None
    profile: str | None = None
    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    tls_ca_path: str | None = None
    tls_server_name: str | None = None
    api_key_env: str | None = None

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with the given flags written over their ``TEMPORAL_*`` variables.

        Raises:
            UsageProblem: ``--api-key-env`` names no set variable (or is not a variable name), or a TLS flag or
                an API key is given while no server is configured (the embedded dev server takes neither).
        """
        environ = dict(base)
        for name, variable in FLAG_VARIABLES.items():
            value = getattr(self, name)
            if value:
                environ[variable] = value
        if self.api_key_env is not None:
            if not _VARIABLE_NAME.fullmatch(self.api_key_env):
                raise UsageProblem(
                    "--api-key-env takes the NAME of an environment variable holding the API key, never the key "
                    "itself: export TEMPORAL_CLOUD_KEY=... then --api-key-env TEMPORAL_CLOUD_KEY"
                )
            key = base.get(self.api_key_env, "")
            if not key:
                raise UsageProblem(f"--api-key-env {self.api_key_env}: ${self.api_key_env} is not set or empty")
            environ["TEMPORAL_API_KEY"] = key
        remote = [flag for flag, given in self._remote_only() if given]
        if remote and not is_configured(environ):
            raise UsageProblem(
                f"{remote[0]} needs a Temporal server: give --address HOST:PORT (or --profile, or TEMPORAL_ADDRESS); "
                "the embedded dev server takes no TLS or API key"
            )
        return environ

    def _remote_only(self) -> list[tuple[str, bool]]:
        return [
            ("--tls-cert-path", bool(self.tls_cert_path)),
            ("--tls-key-path", bool(self.tls_key_path)),
            ("--tls-ca-path", bool(self.tls_ca_path)),
            ("--tls-server-name", bool(self.tls_server_name)),
            ("--api-key-env", self.api_key_env is not None),
        ]


FLAG_VARIABLES = {
    "address": "TEMPORAL_ADDRESS",
    "namespace": "TEMPORAL_NAMESPACE",
    "profile": "TEMPORAL_PROFILE",
    "tls_cert_path": "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "tls_key_path": "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "tls_ca_path": "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
    "tls_server_name": "TEMPORAL_TLS_SERVER_NAME",
}
""":class:`ConnectionFlags` field → the ``temporalio.envconfig`` variable it sets."""

_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONNECTION: ContextVar[ConnectionFlags | None] = ContextVar("molecule_connect_connection", default=None)

_CONNECTION_PARAMETERS = [
    inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[str | None, typer.Option(*decls, help=help_text, show_default=False)],
    )
    for name, decls, help_text in (
        ("address", ("--address",), "Temporal gRPC HOST:PORT (default: $TEMPORAL_ADDRESS, a profile, or embedded)."),
        ("namespace", ("--namespace", "-n"), "Temporal namespace (default: $TEMPORAL_NAMESPACE, else default)."),
        ("profile", ("--profile",), "Profile of the Temporal client config file (default: $TEMPORAL_PROFILE)."),
        ("tls_cert_path", ("--tls-cert-path",), "Client certificate for mTLS."),
        ("tls_key_path", ("--tls-key-path",), "Client private key for mTLS."),
        ("tls_ca_path", ("--tls-ca-path",), "Server CA certificate."),
        ("tls_server_name", ("--tls-server-name",), "Override the server name TLS verifies."),
        ("api_key_env", ("--api-key-env",), "NAME of the environment variable holding the API key (never the key)."),
    )
]

F = TypeVar("F", bound=Callable[..., Any])


def connection_options(command: F) -> F:
    """Give a command the ``temporal`` CLI's connection flags (:class:`ConnectionFlags`); use under ``@app.command``.

    The flags are added to the command's signature for Typer and removed from its call: the command body stays as
    it is, and :func:`connect_client` applies them.
    """

    @functools.wraps(command)
    def with_connection(*args: Any, **kwargs: Any) -> Any:
        flags = ConnectionFlags(**{f.name: kwargs.pop(f.name, None) for f in fields(ConnectionFlags)})
        token = _CONNECTION.set(flags)
        try:
            return command(*args, **kwargs)
        finally:
            _CONNECTION.reset(token)

    signature = inspect.signature(command, eval_str=True)
    with_connection.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *_CONNECTION_PARAMETERS]
    )
    with_connection.__annotations__ = {
        **command.__annotations__,
        **{p.name: p.annotation for p in _CONNECTION_PARAMETERS},
    }
    return with_connection  # type: ignore[return-value]


def connection_environ(base: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment a connecting command reads: ``base`` with the command's connection flags over it."""
    return (_CONNECTION.get() or ConnectionFlags()).environ(base)


async def connect_client(**kwargs: Any) -> ConnectedClient:
    """``worker.temporal.connect_client`` with the project's data converter, for every command that connects.

    The command's connection flags (:func:`connection_options`) override the ``TEMPORAL_*`` environment. When
    ``MOLECULE_CODEC_KEYS`` is set, payloads are encrypted and decrypted with the codec (``worker.codec``); a
    malformed value is a ``CodecError`` (user error).
    """
    kwargs.setdefault("environ", connection_environ())
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
    shared: bool = True
    """Split with the other workers of this host (``--shared-budget``, ``worker.budget_share``)."""


@dataclass(frozen=True)
class WorkerOptions:
    """How ``run`` and ``worker`` run their worker: tokens, shutdown grace, request budget."""

    tokens: TokenStore
    shutdown_grace: float = 30.0
    budget: Budget = Budget()
    lease_timeout_s: float | None = None
    """Hold a liveness lease with this heartbeat timeout (``worker.lease``); ``None``: none."""


async def connect_worker_client(metrics_port: int | None, metrics_host: str = DEFAULT_METRICS_HOST) -> ConnectedClient:
    """Connect for a worker process: with the metrics runtime when ``metrics_port`` is set; announce the server.

    Raises:
        UsageProblem: The metrics address cannot be bound (port taken, address not on this host).
    """
    from worker.assemble import metrics_runtime

    runtime = None
    if metrics_port:
        try:
            runtime = metrics_runtime(metrics_port, host=metrics_host)
        except ValueError as err:  # the SDK's "Failed starting Prometheus exporter: Address already in use ..."
            reason = str(err).removeprefix("Failed starting Prometheus exporter: ")
            raise UsageProblem(
                f"cannot serve metrics on {metrics_host}:{metrics_port}: {reason}; choose another --metrics-port"
            ) from None
        announce(f"Prometheus metrics on http://{metrics_host}:{metrics_port}/metrics")
    connected = await connect_client(runtime=runtime)
    print_server(connected)
    return connected


@contextlib.asynccontextmanager
async def serving(client: Client, task_queue: str, options: WorkerOptions) -> AsyncIterator[None]:
    """Run a worker on ``task_queue`` for the block; leaving it shuts down within ``options.shutdown_grace``."""
    from activities.local_state import state_dir
    from worker.assemble import running_worker
    from worker.budget_share import SHARE_DIR

    budget = options.budget
    async with running_worker(
        client,
        task_queue=task_queue,
        token_for=options.tokens.token_for,
        org_id=os.environ.get("MOLECULE_ORG_ID") or None,
        graceful_shutdown=timedelta(seconds=options.shutdown_grace),
        request_budget_per_min=budget.per_min,
        request_burst=budget.burst,
        budget_share_dir=state_dir() / SHARE_DIR if budget.shared else None,
        lease_timeout_s=options.lease_timeout_s,
    ):
        await announce_budget(client, task_queue, budget)
        yield


async def announce_budget(client: Client, task_queue: str, budget: Budget) -> None:
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
        logging.getLogger(__name__).warning("request budget overloaded: %s", overload_advice("", count, budget.per_min))
    elif count:
        announce(
            f"request budget {budget.per_min:g}/min per platform{scope}: with {count} connector(s) on {task_queue}, "
            f"each inbox is read every {interval:.1f} s at a 1 s poll if this worker serves them all"
        )


async def serve_worker(
    task_queue: str,
    options: WorkerOptions,
    metrics: tuple[int | None, str],
    started: Callable[[Client], Awaitable[str]],
) -> None:
    """Connect, run a worker until signalled, then shut down within ``shutdown_grace`` seconds.

    ``metrics`` is ``(--metrics-port, --metrics-host)``.
    """
    connected = await connect_worker_client(*metrics)
    async with serving(connected.client, task_queue, options):
        await until_signalled(await started(connected.client))
    announce("worker stopped")


def listen(host: str, port: int, flag: str = "--port") -> socket.socket:
    """A listening TCP socket on ``host:port``, for uvicorn to serve on (so a taken port is one line, not a log).

    Raises:
        UsageProblem: The address cannot be bound (port in use, address not on this host), naming ``flag``.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as err:
        raise UsageProblem(f"cannot listen on {host}:{port}: {_os_reason(err)}; check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise UsageProblem(f"cannot listen on {host}:{port}: {_os_reason(err)}; choose another {flag}") from None
    sock.set_inheritable(True)
    return sock


def _os_reason(err: BaseException) -> str:
    reason = getattr(err, "strerror", None) or str(err)
    return reason[:1].lower() + reason[1:]


def serve_asgi(app: Any, sock: socket.socket) -> None:
    """Serve an ASGI app with uvicorn on a socket from :func:`listen`, until Ctrl-C or SIGTERM."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="info"))
    server.run(sockets=[sock])


def print_server(connected: ConnectedClient) -> None:
    """Announce where Temporal is: the Web UI's URL (when known), the gRPC address and the namespace."""
    where = f"Temporal {connected.address}, namespace {connected.namespace}"
    if connected.ui_url:
        announce(f"Temporal Web UI: {connected.ui_url}  ({where})")
    else:
        announce(where)


def setup_logging(log_format: str, log_level: str) -> None:
    """``worker.logs.configure_logging``, with a bad format or level as a :class:`UsageProblem`."""
    try:
        configure_logging(log_format, log_level)
    except ValueError as err:
        raise UsageProblem(str(err)) from None
