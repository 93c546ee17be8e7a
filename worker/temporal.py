"""Connecting to Temporal: a configured server through `temporalio.envconfig`, else the embedded dev server.

A server counts as configured (docs/architecture.md §4) when any of these holds:

- `TEMPORAL_ADDRESS` or `TEMPORAL_PROFILE` is set (non-empty);
- a client config file exists: `TEMPORAL_CONFIG_FILE` when set, else the default path `temporalio.envconfig`
  reads, `<config dir>/temporalio/temporal.toml` (`$XDG_CONFIG_HOME` or `~/.config` on Linux,
  `~/Library/Application Support` on macOS, `%APPDATA%` on Windows; the `dirs` crate's `config_dir`).

Then the profile (`TEMPORAL_PROFILE`, else `default`) is loaded with
`ClientConfig.load_client_connect_config()`, environment variables (`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`,
`TEMPORAL_API_KEY`, `TEMPORAL_TLS*`, `TEMPORAL_GRPC_META_*`) applied on top, and the address defaults to
`localhost:7233`. The Web UI URL is `TEMPORAL_UI_URL` when set, else unknown (None): a remote server's UI
address cannot be derived from its gRPC address.

Otherwise the embedded dev server of `worker.devserver` is ensured in the state directory and used, with
`TEMPORAL_NAMESPACE` (default `default`) as the namespace.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfig
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from activities import local_state
from worker.devserver import LOG_FILE, EmbeddedServer, EmbeddedServerError, ensure_embedded_server

logger = logging.getLogger(__name__)

DEFAULT_ADDRESS = "localhost:7233"
"""Address used when a profile or the environment configures everything but the address."""

UI_URL_ENV = "TEMPORAL_UI_URL"
"""Environment variable giving the Web UI URL of a configured server (shown to users, never derived)."""

CONNECT_TIMEOUT = timedelta(seconds=10)
"""How long one connection attempt may take before it counts as unreachable."""


class TemporalConnectError(RuntimeError):
    """Temporal cannot be reached or its client configuration is invalid; one line saying what to do."""


@dataclass(frozen=True)
class ConnectedClient:
    """A connected client and where it points.

    Attributes:
        client: The connected client, using the requested data converter.
        embedded: The embedded dev server in use, or None for a configured server.
        ui_url: Web UI base URL (the embedded server's, or `TEMPORAL_UI_URL`), or None when unknown.
        namespace: Namespace the client uses.
        address: gRPC `host:port` connected to.
    """

    client: Client
    embedded: EmbeddedServer | None
    ui_url: str | None
    namespace: str
    address: str


def default_config_file(environ: Mapping[str, str] = os.environ) -> Path:
    """Return the client config file `temporalio.envconfig` reads when `TEMPORAL_CONFIG_FILE` is unset.

    Mirrors the SDK core (`dirs::config_dir()/temporalio/temporal.toml`) but reads the given environment, so
    tests and callers with a custom environment see the same path the CLI user would.

    Args:
        environ: Environment to read (`HOME`, `XDG_CONFIG_HOME`, `APPDATA`).

    Returns:
        The path, whether or not it exists.
    """
    home = Path(environ.get("HOME") or Path.home())
    if sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    elif os.name == "nt":
        base = Path(environ.get("APPDATA") or home / "AppData" / "Roaming")
    else:
        xdg = environ.get("XDG_CONFIG_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else home / ".config"
    return base / "temporalio" / "temporal.toml"


def config_file(environ: Mapping[str, str] = os.environ) -> Path:
    """Return the client config file in effect: `TEMPORAL_CONFIG_FILE` when set, else `default_config_file`.

    Args:
        environ: Environment to read.

    Returns:
        The path, whether or not it exists.
    """
    configured = environ.get("TEMPORAL_CONFIG_FILE", "")
    return Path(configured).expanduser() if configured else default_config_file(environ)


def is_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Return whether a Temporal server is configured (module docstring), i.e. the embedded one is not used.

    Args:
        environ: Environment to read.

    Returns:
        True if `TEMPORAL_ADDRESS` or `TEMPORAL_PROFILE` is set or the config file exists.
    """
    return bool(environ.get("TEMPORAL_ADDRESS") or environ.get("TEMPORAL_PROFILE") or config_file(environ).is_file())


async def connect_client(
    *,
    environ: Mapping[str, str] = os.environ,
    state_dir: Path | None = None,
    data_converter: DataConverter = pydantic_data_converter,
    connect_timeout: timedelta = CONNECT_TIMEOUT,
    runtime: Runtime | None = None,
) -> ConnectedClient:
    """Connect to the configured Temporal server, or to the embedded dev server when none is configured.

    Args:
        environ: Environment holding the `TEMPORAL_*` variables (module docstring), `os.environ` by default.
        state_dir: State directory for the embedded server; `local_state.state_dir(environ)` when None.
        data_converter: Converter for the client; pydantic models become ordinary JSON payloads by default.
        connect_timeout: Limit for establishing the connection.
        runtime: SDK runtime, e.g. one exporting Prometheus metrics; the default runtime when None.

    Returns:
        The connected client, with the embedded server and Web UI URL when known.

    Raises:
        TemporalConnectError: If the client configuration is invalid (bad TOML, unknown profile), the server
            does not answer, or the embedded server cannot be started. The message is one line, names the
            address and where it came from, and never contains an API key.
    """
    if is_configured(environ):
        return await _connect_configured(environ, data_converter, connect_timeout, runtime)
    return await _connect_embedded(environ, state_dir, data_converter, connect_timeout, runtime)


async def _connect_configured(
    environ: Mapping[str, str],
    data_converter: DataConverter,
    connect_timeout: timedelta,
    runtime: Runtime | None,
) -> ConnectedClient:
    path = config_file(environ)
    profile = environ.get("TEMPORAL_PROFILE") or None
    file_exists = path.is_file()
    if profile and not file_exists:
        raise TemporalConnectError(
            f"TEMPORAL_PROFILE={profile} is set but the Temporal config file {path} does not exist: "
            "create it (temporal config set) or unset TEMPORAL_PROFILE"
        )
    try:
        # The file is passed explicitly so the one checked above is the one loaded; the SDK would otherwise
        # locate the default file from the real process environment rather than `environ`.
        config = ClientConfig.load_client_connect_config(
            profile=profile,
            config_file=str(path) if file_exists else None,
            disable_file=not file_exists,
            override_env_vars=dict(environ),
        )
    except RuntimeError as exc:
        if file_exists:
            where, fix = f"{path}", "fix the file or point TEMPORAL_CONFIG_FILE at another one"
        else:
            where, fix = "the TEMPORAL_* environment variables", "fix or unset them"
        raise TemporalConnectError(
            f"invalid Temporal client configuration in {where}: {_config_error_reason(exc)}; {fix}"
        ) from None

    address = config.get("target_host") or DEFAULT_ADDRESS
    if environ.get("TEMPORAL_ADDRESS"):
        source = "from TEMPORAL_ADDRESS"
    elif config.get("target_host"):
        source = f"from profile {profile or 'default'} in {path}"
    else:
        source = "the default address"
    namespace = config.get("namespace") or "default"
    try:
        client = await Client.connect(
            address,
            namespace=namespace,
            data_converter=data_converter,
            connect_timeout=connect_timeout,
            runtime=runtime,
            api_key=config.get("api_key"),
            tls=config.get("tls"),
            rpc_metadata=config.get("rpc_metadata") or {},
        )
    except (RuntimeError, RPCError, TimeoutError) as exc:
        raise TemporalConnectError(_unreachable_message(address, source, exc)) from None
    ui_url = environ.get(UI_URL_ENV) or None
    logger.info("connected to Temporal", extra={"address": address, "namespace": namespace, "source": source})
    return ConnectedClient(client=client, embedded=None, ui_url=ui_url, namespace=namespace, address=address)


async def _connect_embedded(
    environ: Mapping[str, str],
    state_dir: Path | None,
    data_converter: DataConverter,
    connect_timeout: timedelta,
    runtime: Runtime | None,
) -> ConnectedClient:
    namespace = environ.get("TEMPORAL_NAMESPACE") or "default"
    directory = state_dir if state_dir is not None else local_state.state_dir(environ)
    try:
        server = await ensure_embedded_server(directory, namespace=namespace)
    except EmbeddedServerError as exc:
        raise TemporalConnectError(str(exc)) from exc
    source = f"embedded dev server, log {directory / LOG_FILE}"
    try:
        client = await Client.connect(
            server.address,
            namespace=namespace,
            data_converter=data_converter,
            connect_timeout=connect_timeout,
            runtime=runtime,
        )
    except (RuntimeError, RPCError, TimeoutError) as exc:
        raise TemporalConnectError(_unreachable_message(server.address, source, exc)) from None
    logger.info(
        "connected to embedded Temporal dev server",
        extra={"address": server.address, "namespace": namespace, "ui_url": server.ui_url},
    )
    return ConnectedClient(
        client=client, embedded=server, ui_url=server.ui_url, namespace=namespace, address=server.address
    )


def _unreachable_message(address: str, source: str, exc: BaseException) -> str:
    """Build `cannot reach Temporal at <address> (<source>): <reason>; <hint>` on one line."""
    hint = "is the server running?"
    if isinstance(exc, RPCError) and exc.status in (
        RPCStatusCode.UNAUTHENTICATED,
        RPCStatusCode.PERMISSION_DENIED,
    ):
        hint = "check TEMPORAL_API_KEY and the TLS settings"
    elif isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
        hint = "check TEMPORAL_NAMESPACE"
    return f"cannot reach Temporal at {address} ({source}): {_connect_error_reason(exc)}; {hint}"


def _connect_error_reason(exc: BaseException) -> str:
    """Pull the OS reason out of the core SDK's nested transport error, e.g. "Connection refused"."""
    text = str(exc) or type(exc).__name__
    for pattern in (r'message: "([^"]+)"', r'error: "([^"]+)"', r'ConnectError\("([^"]+)"'):
        match = re.search(pattern, text)
        if match:
            return match.group(1)
    return _one_line(text.removeprefix("Failed client connect: "))


def _config_error_reason(exc: BaseException) -> str:
    """Keep a config error's description and drop the quoted source lines (they may hold an API key)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not re.match(r"^\s*(\d+\s*)?\|", line)]
    return _one_line("; ".join(lines)) if lines else type(exc).__name__


def _one_line(text: str, limit: int = 200) -> str:
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
