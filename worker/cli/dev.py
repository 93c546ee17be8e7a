"""Local tools: ``backends`` (what this worker can run), ``codec-server``, ``dev-platform`` and ``demo``."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import orjson
import typer

from activities.backends import BackendInfo, available_backends
from activities.local_state import state_dir
from worker import loop as event_loop
from worker.cli.common import UsageProblem, listen, serve_asgi

app = typer.Typer()


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
        if info.child_env is not None:  # which worker variables reach the backend's command
            lines += [f"  {line}" for line in info.child_env.lines()]
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


@app.command("codec-server")
def codec_server(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8081,
    host: Annotated[str, typer.Option(help="Address to bind; anyone who reaches it can decrypt.")] = "127.0.0.1",
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            help="Web UI origin allowed to call it (repeatable; default: the embedded server's UI, $TEMPORAL_UI_URL "
            "and :8233).",
        ),
    ] = None,
) -> None:
    """Serve the Temporal Web UI codec endpoint (/encode, /decode) with the keys of $MOLECULE_CODEC_KEYS."""
    from worker.codec import KEYS_ENV, codec_app, codec_from_env

    codec = codec_from_env()
    if codec is None:
        raise UsageProblem(f"{KEYS_ENV} is not set: export the keys the workers use (keyid:base64key,...)")
    origins = cors_origin or default_cors_origins()
    sock = listen(host, port)
    print(
        f"codec server on http://{host}:{port} for {', '.join(origins)}; set it as the codec endpoint in the Web UI",
        file=sys.stderr,
    )
    serve_asgi(codec_app(codec, cors_origins=origins), sock)


def default_cors_origins(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The Web UI origins the codec server admits by default.

    The embedded server's UI (from the state directory), the one ``TEMPORAL_UI_URL`` names, and ``temporal server
    start-dev``'s ``:8233``; a loopback one both as ``127.0.0.1`` and as ``localhost``.
    """
    from worker.codec import DEFAULT_CORS_ORIGINS
    from worker.devserver import embedded_ui_url
    from worker.temporal import UI_URL_ENV

    origins: list[str] = []
    for url in (embedded_ui_url(state_dir(environ)), environ.get(UI_URL_ENV) or None):
        if url:
            parts = urlsplit(url)
            origin = f"{parts.scheme}://{parts.netloc}"
            origins.append(origin)
            if parts.hostname in ("127.0.0.1", "localhost"):
                other = "localhost" if parts.hostname == "127.0.0.1" else "127.0.0.1"
                origins.append(f"{parts.scheme}://{other}:{parts.port}" if parts.port else f"{parts.scheme}://{other}")
    origins += DEFAULT_CORS_ORIGINS
    return list(dict.fromkeys(origins))


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
    from devplatform.app import create_app
    from devplatform.settings import PlatformSettings

    db_path = db if db is not None else state_dir() / "dev-platform.db"
    sock = listen(host, port)
    print(f"dev platform on http://{host}:{port} (db {db_path}, admin token from --admin-token)", file=sys.stderr)
    serve_asgi(create_app(PlatformSettings(db_path=db_path, admin_token=admin_token)), sock)


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
