"""The embedded Temporal dev server: ``server info`` (where it is), ``server start`` and ``server stop``.

Every command that finds no configured Temporal server starts the embedded one (``worker.devserver``) on a random
free gRPC port and leaves it running, shared. ``server info --env`` prints the ``export TEMPORAL_ADDRESS=...`` lines
that point the ``temporal`` CLI (and any SDK) at it: ``eval "$(molecule-connect server info --env)"``.
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import timedelta
from typing import Annotated, Any

import orjson
import typer

from activities.local_state import state_dir
from worker import loop as event_loop
from worker.cli.common import fail
from worker.devserver import (
    DB_FILE,
    LOG_FILE,
    EmbeddedServer,
    EmbeddedServerError,
    embedded_server_status,
    ensure_embedded_server,
    stop_embedded_server,
)
from worker.temporal import UI_URL_ENV, is_configured

app = typer.Typer()

server_app = typer.Typer(
    help="The embedded Temporal dev server (used when no Temporal server is configured): info, start, stop.",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")

NOT_RUNNING_EXIT = 1
"""Exit code of ``server info`` when no embedded server runs (nothing the user typed is wrong)."""

NamespaceOption = Annotated[
    str,
    typer.Option(
        "--namespace",
        "-n",
        envvar="TEMPORAL_NAMESPACE",
        help="The namespace the commands use (the embedded server creates it on start).",
    ),
]


def server_fields(server: EmbeddedServer, namespace: str) -> dict[str, Any]:
    """What ``server info --json`` prints: address, namespace, Web UI URL, database file, pid, start time, log."""
    return {
        "address": server.address,
        "namespace": namespace,
        "ui_url": server.ui_url,
        "db_path": str(server.db_path),
        "pid": server.pid,
        "started_at": server.started_at.isoformat(),
        "log_path": str(server.db_path.parent / LOG_FILE),
    }


def env_lines(server: EmbeddedServer, namespace: str) -> str:
    """``export`` lines for a POSIX shell that point the ``temporal`` CLI and ``molecule-connect`` at ``server``."""
    variables = {"TEMPORAL_ADDRESS": server.address, "TEMPORAL_NAMESPACE": namespace, UI_URL_ENV: server.ui_url}
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in variables.items())


def _print_server(server: EmbeddedServer, namespace: str, *, as_json: bool, as_env: bool) -> None:
    if as_env:
        print(env_lines(server, namespace))
    elif as_json:
        print(orjson.dumps(server_fields(server, namespace), option=orjson.OPT_INDENT_2).decode())
    else:
        info = server_fields(server, namespace)
        labels = {
            "address": "address",
            "namespace": "namespace",
            "ui_url": "web ui",
            "db_path": "database",
            "pid": "pid",
            "log_path": "log",
        }
        for key, label in labels.items():
            print(f"{label:<10} {info[key]}")


def _warn_if_configured(server: EmbeddedServer) -> None:
    """Say so when the environment points commands at another server than this embedded one."""
    address = os.environ.get("TEMPORAL_ADDRESS", "")
    if is_configured() and address != server.address:
        where = f"TEMPORAL_ADDRESS={address}" if address else "a Temporal profile or config file"
        print(f"note: {where} is set: commands connect there, not to this embedded server", file=sys.stderr)


@server_app.command("info")
def server_info(
    as_json: Annotated[bool, typer.Option("--json", help="Print the fields as a JSON object.")] = False,
    as_env: Annotated[
        bool, typer.Option("--env", help='Print export lines for eval "$(molecule-connect server info --env)".')
    ] = False,
    namespace: NamespaceOption = "default",
) -> None:
    """Where the embedded server is: gRPC address, namespace, Web UI URL, database file, pid (exit 1: not running)."""
    if as_json and as_env:
        fail("give one of --json or --env")
    directory = state_dir()
    server = embedded_server_status(directory)
    if server is None:
        fail(
            f"no embedded Temporal dev server is running (state dir {directory}): start it with "
            "`molecule-connect server start`",
            code=NOT_RUNNING_EXIT,
        )
    _print_server(server, namespace, as_json=as_json, as_env=as_env)
    _warn_if_configured(server)


@server_app.command("start")
def server_start(
    namespace: NamespaceOption = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print the fields as a JSON object.")] = False,
    as_env: Annotated[bool, typer.Option("--env", help="Print export lines, like `server info --env`.")] = False,
) -> None:
    """Start the embedded server in the background (or reuse the running one); print where it is."""
    if as_json and as_env:
        fail("give one of --json or --env")
    try:
        server = event_loop.run(ensure_embedded_server(state_dir(), namespace=namespace))
    except EmbeddedServerError as err:
        fail(str(err), code=1)
    what = "started" if server.started_here else "already running"
    print(f"Temporal dev server {what} (pid {server.pid})", file=sys.stderr)
    _print_server(server, namespace, as_json=as_json, as_env=as_env)


@server_app.command("stop")
def server_stop(
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait after SIGTERM before SIGKILL.", min=0.1)
    ] = 10.0,
) -> None:
    """Stop the embedded server; its database is kept, and the next command starts it again on the same ports."""
    directory = state_dir()
    running = embedded_server_status(directory)
    try:
        stopped = stop_embedded_server(directory, timeout=timedelta(seconds=timeout))
    except EmbeddedServerError as err:
        fail(str(err), code=1)
    if stopped:
        pid = f" (pid {running.pid})" if running is not None else ""
        print(
            f"stopped the embedded Temporal dev server{pid}; its database {directory / DB_FILE} is kept",
            file=sys.stderr,
        )
    else:
        print(f"no embedded Temporal dev server was running (state dir {directory})", file=sys.stderr)
