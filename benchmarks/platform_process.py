"""The devplatform in a child process, with a request log the benchmarks read.

Why not :class:`devplatform.server.RunningPlatform`: it serves uvicorn from a thread of the calling process, so
in a benchmark the platform's request handling would share the worker's CPU time and GIL and be counted as the
worker's. Here the very same app (:func:`devplatform.app.create_app`) is served by uvicorn in its own process,
like a real platform on another machine, and its CPU is measured apart.

The app is wrapped in :class:`RequestLog`, a pure ASGI middleware that records, without touching the app:

- counts by request kind (``register``, ``heartbeat``, ``inbox``, ``a2a``, ``notify``, ``admin``, ``other``) and
  status, and the app's handling time per kind;
- per workspace: each inbox read (start, end, whether it returned rows), each heartbeat time, the first register;
- accepted ``POST /workspaces/{id}/a2a`` per target (replies to a peer are counted without reading its inbox);
- the stale sweep's transitions to ``awaiting_agent`` (from the ``devplatform.sweeper`` log).

It also answers a few ``/_bench/*`` paths itself (the app never sees them), read by :class:`PlatformProcess`:
``GET /_bench/stats``, ``GET /_bench/replies?target=``, ``GET /_bench/inbox_reads?workspace=``,
``GET /_bench/heartbeats``, ``GET /_bench/registered``, ``POST /_bench/reset`` and ``POST /_bench/send`` (a burst
of A2A messages injected through the app in-process, so the sending costs neither the worker's process nor a
third one).

Run as ``python -m benchmarks.platform_process --db PATH`` it prints ``{"port": N, "pid": N}`` once serving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson

from benchmarks.machine import REPO_ROOT, sample_process
from benchmarks.stats import summarize
from devplatform.client import AsyncPlatformAdmin, CreatedWorkspace
from worker import loop as event_loop

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_TIMELINE = 2_000_000
"""Inbox reads and heartbeats kept in memory at most (a 500-workspace fleet makes ~60 reads per second)."""
MAX_DURATIONS = 200_000
"""Handling-time samples kept per request kind."""


def classify(method: str, path: str) -> tuple[str, str | None]:
    """The request kind and the workspace id in its path, if any (docs/protocol.md §3)."""
    if path.startswith("/admin/"):
        return "admin", None
    if method == "POST" and path == "/registry/register":
        return "register", None
    if method == "POST" and path == "/registry/heartbeat":
        return "heartbeat", None
    parts = path.strip("/").split("/")
    if len(parts) == 3 and parts[0] == "workspaces":
        kind = {("GET", "activity"): "inbox", ("POST", "a2a"): "a2a", ("POST", "notify"): "notify"}.get(
            (method, parts[2])
        )
        if kind is not None:
            return kind, parts[1]
    return "other", None


class _StaleLog(logging.Handler):
    """Collects the sweeper's ``stale workspaces back to awaiting_agent`` records."""

    def __init__(self, sink: list[tuple[float, list[str]]]) -> None:
        super().__init__(logging.INFO)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        ids = getattr(record, "workspace_ids", None)
        if ids:
            self._sink.append((record.created, list(ids)))


class RequestLog:
    """ASGI middleware recording what the benchmarks need to know about the platform's traffic."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self.started = time.time()
        self.counts: dict[str, int] = defaultdict(int)
        self.durations: dict[str, list[float]] = defaultdict(list)
        self.a2a_ok: dict[str, int] = defaultdict(int)
        self.inbox_reads: dict[str, list[tuple[float, float, bool]]] = defaultdict(list)
        self.heartbeats: dict[str, list[float]] = defaultdict(list)
        self.registered: dict[str, float] = {}
        self.stale: list[tuple[float, list[str]]] = getattr(self, "stale", [])
        self.stale.clear()
        self._timeline = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer ``/_bench/*`` here; pass everything else to the app and record it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/_bench/"):
            await self._bench(scope, receive, send)
            return
        method: str = scope["method"]
        kind, workspace_id = classify(method, path)
        started = time.time()
        status = 0
        empty_body = True
        body = bytearray()

        async def receive_and_keep() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < 4096:
                body.extend(message.get("body", b""))
            return message

        async def send_and_watch(message: Message) -> None:
            nonlocal status, empty_body
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                if chunk and chunk.strip() not in (b"[]", b""):
                    empty_body = False
            await send(message)

        keep_body = kind in ("heartbeat", "register")
        await self.app(scope, receive_and_keep if keep_body else receive, send_and_watch)
        ended = time.time()
        self.counts[f"{kind} {status}"] += 1
        durations = self.durations[kind]
        if len(durations) < MAX_DURATIONS:
            durations.append(ended - started)
        if status >= 300:
            return
        if kind == "a2a" and workspace_id is not None:
            self.a2a_ok[workspace_id] += 1
        elif kind == "inbox" and workspace_id is not None and self._room():
            self.inbox_reads[workspace_id].append((started, ended, not empty_body))
        elif keep_body:
            try:
                data = orjson.loads(bytes(body))
            except orjson.JSONDecodeError:
                return
            if not isinstance(data, dict):
                return
            if kind == "heartbeat" and isinstance(data.get("workspace_id"), str) and self._room():
                self.heartbeats[data["workspace_id"]].append(started)
            elif kind == "register" and isinstance(data.get("id"), str):
                self.registered.setdefault(data["id"], started)

    def _room(self) -> bool:
        self._timeline += 1
        return self._timeline <= MAX_TIMELINE

    # --- /_bench -----------------------------------------------------------------------------------------------

    async def _bench(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        body = bytearray()
        while True:
            message = await receive()
            body.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        route = (scope["method"], scope["path"])
        result: Any
        if route == ("GET", "/_bench/stats"):
            result = self.stats()
        elif route == ("GET", "/_bench/replies"):
            result = {"count": self.a2a_ok.get(query.get("target", ""), 0)}
        elif route == ("GET", "/_bench/inbox_reads"):
            result = self.inbox_reads.get(query.get("workspace", ""), [])
        elif route == ("GET", "/_bench/heartbeats"):
            result = self.heartbeats
        elif route == ("GET", "/_bench/registered"):
            result = self.registered
        elif route == ("POST", "/_bench/reset"):
            self.reset()
            result = {"reset": True}
        elif route == ("POST", "/_bench/send"):
            result = await self._send_burst(orjson.loads(bytes(body)))
        else:
            await _respond(send, 404, {"error": f"no bench route {scope['method']} {scope['path']}"})
            return
        await _respond(send, 200, result)

    def stats(self) -> dict[str, Any]:
        """Counts, handling times (ms), replies per target, stale transitions, registered workspaces."""
        return {
            "since": self.started,
            "now": time.time(),
            "counts": dict(self.counts),
            "handling_ms": {
                kind: summarize([d * 1000 for d in values], digits=2) for kind, values in self.durations.items()
            },
            "a2a_ok": dict(self.a2a_ok),
            "stale": self.stale,
            "registered": len(self.registered),
            "timeline_full": self._timeline > MAX_TIMELINE,
        }

    async def _send_burst(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Post ``spec["messages"]`` (``target``, ``token``, ``sender_id``, ``body``) through the app, in-process."""
        messages: list[dict[str, Any]] = spec["messages"]
        concurrency = int(spec.get("concurrency", 16))
        origin = spec["origin"]
        errors = 0
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for message in messages:
            queue.put_nowait(message)
        transport = httpx.ASGITransport(app=self)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=origin, timeout=60.0) as http:

            async def sender() -> None:
                nonlocal errors
                while not queue.empty():
                    message = queue.get_nowait()
                    response = await http.post(
                        f"/workspaces/{message['target']}/a2a",
                        content=orjson.dumps(message["body"]),
                        headers={
                            "Authorization": f"Bearer {message['token']}",
                            "X-Workspace-ID": message["sender_id"],
                            "Content-Type": "application/json",
                            "Origin": origin,
                        },
                    )
                    if response.status_code >= 300:
                        errors += 1

            started = time.time()
            await asyncio.gather(*(sender() for _ in range(max(concurrency, 1))))
        return {"sent": len(messages) - errors, "errors": errors, "started": started, "ended": time.time()}


async def _respond(send: Send, status: int, body: Any) -> None:
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def serve(
    db_path: Path,
    host: str,
    port: int,
    stale_after_s: float | None,
    sweep_every_s: float | None,
    rate_limit_per_min: int = 0,
) -> None:
    """Serve the wrapped devplatform until SIGTERM; print ``{"port", "pid"}`` on stdout once serving."""
    import uvicorn

    from devplatform.app import create_app
    from devplatform.settings import PlatformSettings

    overrides: dict[str, Any] = {}
    if stale_after_s is not None:
        overrides["stale_after_s"] = stale_after_s
    if sweep_every_s is not None:
        overrides["sweep_every_s"] = sweep_every_s
    settings = PlatformSettings(db_path=db_path, rate_limit_per_min=rate_limit_per_min, **overrides)
    app = RequestLog(create_app(settings))
    sweeper_log = logging.getLogger("devplatform.sweeper")
    sweeper_log.setLevel(logging.INFO)
    sweeper_log.addHandler(_StaleLog(app.stale))

    # proto=IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP. Without it
    # the response body waits for the ACK of its headers (Nagle) and every keep-alive request costs ~40 ms.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        print(orjson.dumps({"port": sock.getsockname()[1], "pid": os.getpid()}).decode(), flush=True)

    async def main() -> None:
        announcer = asyncio.create_task(announce())
        await server.serve(sockets=[sock])
        announcer.cancel()

    event_loop.run(main())


class PlatformProcess:
    """A devplatform child process (rate limit off unless asked) and clients for its admin API and request log.

    Use as ``async with PlatformProcess(db_path) as platform``; leaving terminates the child.

    Args:
        db_path: SQLite file (created).
        stale_after_s: Override of the 90 s stale window (``None``: production value).
        sweep_every_s: Override of the 15 s sweep period.
        rate_limit_per_min: The platform's per-IP rate limit (docs/protocol.md §2: 600); ``0``: off. Everything
            the benchmark and the worker send comes from one IP, but ``/admin`` and ``/_bench`` are exempt.
    """

    def __init__(
        self,
        db_path: Path,
        *,
        stale_after_s: float | None = None,
        sweep_every_s: float | None = None,
        rate_limit_per_min: int = 0,
    ):
        self._db_path = db_path
        self._stale_after_s = stale_after_s
        self._sweep_every_s = sweep_every_s
        self._rate_limit_per_min = rate_limit_per_min
        self._proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.pid: int | None = None
        self.admin_token = "dev-admin"
        self.admin: AsyncPlatformAdmin | None = None
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> PlatformProcess:
        args = [sys.executable, "-m", "benchmarks.platform_process", "--db", str(self._db_path)]
        if self._stale_after_s is not None:
            args += ["--stale-after", str(self._stale_after_s)]
        if self._sweep_every_s is not None:
            args += ["--sweep-every", str(self._sweep_every_s)]
        if self._rate_limit_per_min:
            args += ["--rate-limit", str(self._rate_limit_per_min)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
        self._proc = await asyncio.create_subprocess_exec(
            *args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        assert self._proc.stdout is not None
        line = b""
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), timeout=30)
            announced = orjson.loads(line)
        except (TimeoutError, orjson.JSONDecodeError) as err:
            await self._stop()
            raise RuntimeError(f"devplatform process did not start: {line[:200]!r}") from err
        self.url = f"http://127.0.0.1:{announced['port']}"
        self.pid = int(announced["pid"])
        self.admin = AsyncPlatformAdmin(self.url, admin_token=self.admin_token, timeout_s=60.0)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(120.0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.admin is not None:
            await self.admin.aclose()
        if self._http is not None:
            await self._http.aclose()
        await self._stop()

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def _get(self, path: str, **params: str) -> Any:
        assert self._http is not None, "not started"
        response = await self._http.get(path, params=params)
        response.raise_for_status()
        return orjson.loads(response.content)

    async def stats(self) -> dict[str, Any]:
        """See :meth:`RequestLog.stats`."""
        return await self._get("/_bench/stats")

    async def replies(self, target: str) -> int:
        """Accepted ``POST /workspaces/{target}/a2a`` so far (our replies, when ``target`` is the sending peer)."""
        return int((await self._get("/_bench/replies", target=target))["count"])

    async def inbox_reads(self, workspace_id: str) -> list[tuple[float, float, bool]]:
        """Successful inbox reads of a workspace: ``(start, end, returned rows)``, wall-clock seconds."""
        return [tuple(r) for r in await self._get("/_bench/inbox_reads", workspace=workspace_id)]  # type: ignore[misc]

    async def heartbeats(self) -> dict[str, list[float]]:
        """Accepted heartbeats by workspace, wall-clock seconds."""
        return await self._get("/_bench/heartbeats")

    async def registered(self) -> dict[str, float]:
        """First accepted register by workspace, wall-clock seconds."""
        return await self._get("/_bench/registered")

    async def reset(self) -> None:
        """Forget the request log so far."""
        assert self._http is not None
        (await self._http.post("/_bench/reset")).raise_for_status()

    async def send_burst(
        self, messages: list[tuple[str, CreatedWorkspace, dict[str, Any]]], *, concurrency: int = 16
    ) -> dict[str, Any]:
        """Have the platform accept ``(target id, sender, A2A body)`` messages as fast as it can.

        Returns:
            ``{"sent", "errors", "started", "ended"}`` (wall-clock seconds).
        """
        assert self._http is not None
        spec = {
            "origin": self.url,
            "concurrency": concurrency,
            "messages": [
                {"target": target, "token": sender.token, "sender_id": sender.id, "body": body}
                for target, sender, body in messages
            ],
        }
        response = await self._http.post("/_bench/send", content=orjson.dumps(spec))
        response.raise_for_status()
        return orjson.loads(response.content)

    def sample(self) -> Any:
        """CPU and memory of the platform process now."""
        return sample_process(self.pid) if self.pid else None


def main(argv: list[str] | None = None) -> None:
    """Command line of the child process."""
    parser = argparse.ArgumentParser(description="Serve the devplatform with the benchmarks' request log.")
    parser.add_argument("--db", type=Path, required=True, help="SQLite file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--stale-after", type=float, default=None, help="stale window in seconds (default 90)")
    parser.add_argument("--sweep-every", type=float, default=None, help="stale sweep period (default 15)")
    parser.add_argument("--rate-limit", type=int, default=0, help="requests/min per client IP (default 0: off)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.db, args.host, args.port, args.stale_after, args.sweep_every, args.rate_limit)


if __name__ == "__main__":
    main()
