"""spawn(): command processes started with vfork and watched by a pidfd, on asyncio's loop and on uvloop.

Every async test here runs once per loop (``conftest.py`` here, ``pytest_asyncio_loop_factories``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from activities.backends.process import spawn as spawn_module
from activities.backends.process.spawn import pidfd_supported, spawn
from tests.unit.backends.commands.processes import process_state

_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


@pytest.fixture(params=["pidfd", "asyncio-fallback"])
def spawn_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Both ways of starting a child: the pidfd path (where supported) and asyncio's own subprocess."""
    if request.param == "pidfd":
        if not pidfd_supported():
            pytest.skip("no pidfd on this system")
    else:
        monkeypatch.setattr(spawn_module, "pidfd_supported", lambda: False)
    yield request.param


async def test_tests_run_on_the_loop_they_are_named_after(request: pytest.FixtureRequest):
    loop_name = type(asyncio.get_running_loop()).__module__

    assert loop_name.startswith("uvloop") == ("uvloop" in request.node.name)


async def test_spawn_pipes_round_trip_and_exit_status(spawn_path: str):
    child = await spawn(["sh", "-c", "cat; echo err >&2; exit 3"], env=_ENV, cwd=None)
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None

    child.stdin.write(b"hello")
    await child.stdin.drain()
    child.stdin.close()

    assert await child.stdout.read() == b"hello"
    assert await child.stderr.read() == b"err\n"
    assert await child.wait() == 3
    assert await child.wait() == 3, "wait() may be called again"


async def test_spawn_child_leads_its_own_process_group(spawn_path: str):
    child = await spawn(["sleep", "5"], env=_ENV, cwd=None)

    assert os.getpgid(child.pid) == child.pid
    os.killpg(child.pid, signal.SIGTERM)
    assert await child.wait() == -signal.SIGTERM


async def test_spawn_reaps_a_child_nobody_waits_for(spawn_path: str):
    """No zombie is left behind when the caller never awaits wait() (e.g. it was cancelled)."""
    child = await spawn(["true"], env=_ENV, cwd=None)
    pid = child.pid
    assert child.stdout is not None
    await child.stdout.read()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while process_state(pid) is not None and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert process_state(pid) is None, f"pid {pid} still in /proc (state {process_state(pid)})"


async def test_spawn_in_directory_with_given_environment(spawn_path: str, tmp_path: Path):
    child = await spawn(["sh", "-c", 'pwd; echo "$ONLY"'], env={**_ENV, "ONLY": "this"}, cwd=str(tmp_path))
    assert child.stdout is not None

    lines = (await child.stdout.read()).decode().splitlines()

    assert await child.wait() == 0
    assert Path(lines[0]).resolve() == tmp_path.resolve()
    assert lines[1] == "this"


@pytest.mark.parametrize(
    ("argv", "cwd", "error"),
    [
        (["no-such-program-xyz"], None, FileNotFoundError),
        (["true"], "/no/such/directory", FileNotFoundError),
    ],
)
async def test_spawn_unusable_program_or_directory_raises(
    spawn_path: str, argv: list[str], cwd: str | None, error: type[Exception]
):
    with pytest.raises(error):
        await spawn(argv, env=_ENV, cwd=cwd)


async def test_spawn_many_concurrent_children(spawn_path: str):
    async def run_one(n: int) -> bytes:
        child = await spawn(["cat"], env=_ENV, cwd=None)
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(str(n).encode())
        child.stdin.close()
        output = await child.stdout.read()
        assert await child.wait() == 0
        return output

    outputs = await asyncio.gather(*(run_one(n) for n in range(50)))

    assert outputs == [str(n).encode() for n in range(50)]


async def test_spawn_closes_each_pipe_once_while_other_threads_open_files(spawn_path: str):
    """A pipe end closed twice closes whatever another thread has since opened under that number (on uvloop it
    was, until the file objects stopped owning their descriptors there): that thread's files must survive."""
    stop = threading.Event()
    errors: list[OSError] = []

    def open_and_close_pipes() -> None:
        while not stop.is_set():
            read_end, write_end = os.pipe()
            try:
                os.write(write_end, b"x")
                os.read(read_end, 1)
                os.close(read_end)
                os.close(write_end)
            except OSError as err:  # EBADF: someone else closed our descriptor
                errors.append(err)

    async def run_one(n: int) -> bytes:
        child = await spawn(["cat"], env=_ENV, cwd=None)
        assert child.stdin is not None and child.stdout is not None and child.stderr is not None
        child.stdin.write(str(n).encode())
        child.stdin.close()
        output = await child.stdout.read()
        await child.stderr.read()
        assert await child.wait() == 0
        return output

    fds_before = len(os.listdir("/proc/self/fd"))
    thread = threading.Thread(target=open_and_close_pipes)
    thread.start()
    try:
        for batch in range(10):
            outputs = await asyncio.gather(*(run_one(n) for n in range(20)))
            assert outputs == [str(n).encode() for n in range(20)], f"batch {batch}"
    finally:
        stop.set()
        thread.join()
    await asyncio.sleep(0.05)  # let the last transports finish closing

    assert errors == []
    assert len(os.listdir("/proc/self/fd")) <= fds_before, "pipe ends leaked"
