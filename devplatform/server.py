"""Running the devplatform over HTTP.

:func:`serve` blocks (for the CLI); :class:`RunningPlatform` is a background server on loopback, for tests,
the demo and benchmarks.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import uvicorn

from devplatform.app import create_app
from devplatform.client import PlatformAdmin
from devplatform.settings import PlatformSettings


def serve(settings: PlatformSettings, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve a devplatform until interrupted (Ctrl-C / SIGTERM), logging like uvicorn.

    Args:
        settings: Platform settings.
        host: Interface to bind.
        port: TCP port to bind.
    """
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


class RunningPlatform:
    """A devplatform served by uvicorn in a background thread.

    The socket is bound in :meth:`start`, so ``port=0`` picks a free port and :attr:`url` is known once
    started. Without settings, the database is a fresh file in a temporary directory removed by :meth:`close`.
    Restarting on the same ``settings`` (and ``port``) keeps every workspace and row, which is how platform
    crashes are simulated. Use it as a context manager (``with`` or ``async with``; leaving calls
    :meth:`close`) or call :meth:`start`/:meth:`stop`.

    Args:
        settings: Platform settings; default: a temporary database and production timings.
        host: Interface to bind.
        port: Port to bind; ``0`` picks a free one.
        startup_timeout_s: How long :meth:`start` waits for uvicorn to accept connections.
        log_level: uvicorn's log level.
    """

    def __init__(
        self,
        settings: PlatformSettings | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout_s: float = 10.0,
        log_level: str = "warning",
    ) -> None:
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        if settings is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="devplatform-")
            settings = PlatformSettings(db_path=Path(self._tempdir.name) / "platform.db")
        self._settings = settings
        self._host = host
        self._port = port
        self._startup_timeout_s = startup_timeout_s
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def settings(self) -> PlatformSettings:
        """The settings the platform runs with."""
        return self._settings

    @property
    def port(self) -> int:
        """The bound port (``0`` before :meth:`start` when a free port was requested)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL without trailing slash, e.g. ``http://127.0.0.1:54321``.

        Raises:
            RuntimeError: Not started.
        """
        if self._server is None:
            raise RuntimeError("RunningPlatform is not started")
        return f"http://{self._host}:{self._port}"

    def admin(self, *, timeout_s: float = 10.0) -> PlatformAdmin:
        """A new :class:`~devplatform.client.PlatformAdmin` for this platform; the caller closes it."""
        return PlatformAdmin(self.url, admin_token=self._settings.admin_token, timeout_s=timeout_s)

    def start(self) -> Self:
        """Bind, start uvicorn in a daemon thread and wait until it serves.

        Returns:
            ``self``.

        Raises:
            RuntimeError: Already started, or the server did not come up within ``startup_timeout_s``.
            OSError: The port cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("RunningPlatform is already started")
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the listening socket's
        # proto says TCP; with proto 0, every keep-alive response waits ~40 ms for Nagle + delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self._settings),
            log_level=self._log_level,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"devplatform-{self._port}", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + self._startup_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError(f"devplatform did not start on {self._host}:{self._port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Shut uvicorn down (lifespan included, so the database is closed) and wait for the thread.

        Idempotent. The database file is kept, so :meth:`start` can bring the same platform back.
        """
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=10.0)

    def close(self) -> None:
        """:meth:`stop`, then delete the temporary database directory, if this object made one."""
        self.stop()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)
