"""The baseline: the poll-mode protocol as a plain asyncio loop, without Temporal, shaped like the Go CLI.

``molecule connect`` (Molecule-AI/molecule-cli ``internal/connect``) registers, then runs two loops until it is
stopped: a heartbeat every 30 s, and a ticker that reads the inbox every poll interval and handles the batch
**sequentially** (backend, then reply), saving the cursor to a file after each row. :class:`BaselineConnector`
does the same, so the benchmarks can say what durability through Temporal costs against the simplest thing that
works.

It shares with the real connector everything that is not the delivery engine, so only the engine is compared:
the skip rules and A2A parsing (:func:`activities.inbox.row_to_polled`), the backend registry
(:func:`activities.backends.create_backend`), and the reply shape and deterministic reply id
(:func:`activities.a2a.build_reply_request`). A body the connector would pass by reference (over
:data:`activities.inbox.BODY_REF_BYTES`) is parsed from the row already in memory: the baseline has no history
to keep small, so it needs no re-read. It does not repeat the Go CLI's known mistakes (docs/protocol.md §9:
reply shape, canvas replies, notify echo rows). What it deliberately lacks is what Temporal gives the connector:
no retries with backoff, no dead letters, no parallel lanes, no crash-safe reply-once guarantee (a crash between
reply and cursor save replies twice), no control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from activities.a2a import TextPart, build_reply_request, parse_inbound, reply_message_id
from activities.backends import Backend, BackendRequest, create_backend
from activities.inbox import INBOX_TYPE, row_to_polled
from activities.messages import BackendSpec, PolledRow
from devplatform.client import CreatedWorkspace
from worker.http import platform_client

logger = logging.getLogger(__name__)

HTTP_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=30.0)
REGISTER_ATTEMPTS = 5
"""Register is retried 5 times with doubling delays (1 s … 16 s), as the Go CLI does."""


class CursorFile:
    """The cursor on disk: ``{"cursor": "<row id>"}``, written atomically (tmp + rename, mode 0600).

    A missing file is no cursor (a cold start); a corrupt one is an error.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> str | None:
        """The saved cursor, or ``None`` when there is no file yet."""
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        cursor = data.get("cursor") if isinstance(data, dict) else None
        if cursor is not None and not isinstance(cursor, str):
            raise ValueError(f"corrupt cursor file {self.path}")
        return cursor

    def save(self, cursor: str | None) -> None:
        """Replace the file with the new cursor."""
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps({"cursor": cursor}))
        os.replace(tmp, self.path)


class BaselineConnector:
    """One workspace served by a register call, a heartbeat loop and a sequential poll loop.

    Args:
        http: Shared pooled client (not owned).
        platform_url: Platform base URL.
        workspace: The workspace and its token.
        cursor_file: Where the cursor is kept.
        backend: The backend (the same object the connector's ``dispatch`` activity would use).
        poll_interval_s: Inbox read period (a ticker: a slow batch delays the next read, later ticks are dropped).
        heartbeat_interval_s: Heartbeat period.
        limit: Rows per inbox read.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        platform_url: str,
        workspace: CreatedWorkspace,
        cursor_file: CursorFile,
        backend: Backend,
        poll_interval_s: float = 1.0,
        heartbeat_interval_s: float = 30.0,
        limit: int = 100,
    ) -> None:
        assert workspace.token is not None
        self._http = http
        self._url = platform_url.rstrip("/")
        self._workspace_id = workspace.id
        self._headers = {
            "Authorization": f"Bearer {workspace.token}",
            "Accept": "application/json",
            "Origin": self._url,
        }
        self._cursor_file = cursor_file
        self._backend = backend
        self._poll_interval_s = poll_interval_s
        self._heartbeat_interval_s = heartbeat_interval_s
        self._limit = limit
        self._cursor: str | None = None
        self._seeded = False
        self.counters = {"replied": 0, "skipped": 0, "failed": 0, "polls": 0, "beats": 0}

    async def run(self) -> None:
        """Register, then heartbeat and poll until cancelled."""
        self._cursor = self._cursor_file.load()
        self._seeded = self._cursor is not None
        await self._register()
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        try:
            await self._poll_loop()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    # --- HTTP ---------------------------------------------------------------------------------------------------

    async def _post(self, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return await self._http.post(
            f"{self._url}{path}",
            content=orjson.dumps(body),
            headers={**self._headers, "Content-Type": "application/json", **headers},
        )

    async def _register(self) -> None:
        body = {"id": self._workspace_id, "delivery_mode": "poll", "agent_card": {"name": "baseline-loop"}}
        delay = 1.0
        for attempt in range(1, REGISTER_ATTEMPTS + 1):
            try:
                response = await self._post("/registry/register", body)
                if response.status_code < 300:
                    return
                if response.status_code < 500 and response.status_code not in (408, 425, 429):
                    raise RuntimeError(f"register: HTTP {response.status_code}")
            except httpx.HTTPError as err:
                logger.warning("register attempt %d failed: %s", attempt, err)
            await asyncio.sleep(delay)
            delay *= 2
        raise RuntimeError(f"register: gave up after {REGISTER_ATTEMPTS} attempts")

    async def _heartbeat_loop(self) -> None:
        async for _ in _ticker(self._heartbeat_interval_s):
            try:
                response = await self._post("/registry/heartbeat", {"workspace_id": self._workspace_id})
                if response.status_code < 300:
                    self.counters["beats"] += 1
            except httpx.HTTPError as err:
                logger.warning("heartbeat failed: %s", err)

    async def _read(self, **params: Any) -> list[dict[str, Any]] | None:
        """One inbox read; ``None`` on a 410 (cursor gone)."""
        response = await self._http.get(
            f"{self._url}/workspaces/{self._workspace_id}/activity",
            params={"type": INBOX_TYPE, **params},
            headers=self._headers,
        )
        self.counters["polls"] += 1
        if response.status_code == 410:
            return None
        response.raise_for_status()
        rows = orjson.loads(response.content)
        return [r for r in rows if isinstance(r, dict) and r.get("id")]

    # --- poll and dispatch ---------------------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        async for _ in _ticker(self._poll_interval_s):
            try:
                rows = await self._poll()
            except httpx.HTTPError as err:
                logger.warning("poll failed: %s", err)
                continue
            for row in rows:
                if not await self._handle(row):
                    break  # the cursor stays before the failed row; the next tick retries it
                self._cursor = str(row["id"])
                self._cursor_file.save(self._cursor)

    async def _poll(self) -> list[dict[str, Any]]:
        """The next rows, oldest first; the cold start (``latest``) only seeds the cursor."""
        if self._cursor is not None:
            rows = await self._read(since_id=self._cursor, limit=self._limit)
            if rows is not None:
                return rows
            logger.warning("cursor %s not found (410); starting from the newest row", self._cursor)
            self._cursor, self._seeded = None, False
        newest = await self._read(limit=1 if not self._seeded else self._limit) or []
        newest.reverse()  # without a cursor the platform answers newest first
        if not self._seeded:
            self._seeded = True
            if newest:
                self._cursor = str(newest[-1]["id"])
                self._cursor_file.save(self._cursor)
            return []
        return newest

    async def _handle(self, raw: dict[str, Any]) -> bool:
        """Run the backend on one row and reply; ``False`` when it failed (the row will be read again)."""
        row = row_to_polled(raw)
        if row.outcome != "deliver" or row.message is None:
            self.counters["skipped"] += 1
            return True
        message, text = row.message, row.message_text
        if row.body_ref is not None:
            # A large body the connector would re-read in ``dispatch``; here the raw row is still at hand.
            parsed = parse_inbound(raw["request_body"])
            message, text = parsed.message, parsed.text
        try:
            response = await self._backend.handle(
                BackendRequest(
                    workspace_id=self._workspace_id,
                    row_id=row.row_id,
                    source_id=row.source_id,
                    lane=row.message.context_id or row.source_id or "canvas",
                    message=message,
                    text=text,
                    attempt=1,
                )
            )
            reply = await self._reply(row, list(response.parts))
        except Exception as err:  # noqa: BLE001 - the loop goes on, like the Go CLI's next tick
            logger.warning("dispatch of %s failed: %s", row.row_id, err)
            self.counters["failed"] += 1
            return False
        if reply.status_code >= 300:
            logger.warning("reply to %s: HTTP %d", row.row_id, reply.status_code)
            self.counters["failed"] += 1
            return False
        self.counters["replied"] += 1
        return True

    async def _reply(self, row: PolledRow, parts: list[Any]) -> httpx.Response:
        """Reply to a peer (``POST /workspaces/{source}/a2a``) or to the canvas (``POST .../notify``)."""
        assert row.message is not None
        if row.source_id is None:
            text = "\n".join(p.text for p in parts if isinstance(p, TextPart))
            return await self._post(f"/workspaces/{self._workspace_id}/notify", {"message": text or "(no text)"})
        message_id = reply_message_id(self._workspace_id, row.row_id)
        request = build_reply_request(
            message_id=message_id,
            request_id=message_id,
            parts=parts,
            in_reply_to=row.message,
            row_id=row.row_id,
            extra_metadata={"auto_reply": True, "auto_reply_depth": row.auto_reply_depth + 1},
        )
        return await self._post(f"/workspaces/{row.source_id}/a2a", request, **{"X-Workspace-ID": self._workspace_id})


async def _ticker(interval_s: float) -> AsyncIterator[None]:
    """Tick every ``interval_s`` on a fixed grid, first tick one interval from now (Go's ``time.Ticker``).

    A consumer slower than the interval gets one tick at once when it comes back; the missed ones are dropped.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    tick = 0
    while True:
        tick += 1
        delay = start + tick * interval_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            tick = int((loop.time() - start) // interval_s)
        yield


@contextlib.asynccontextmanager
async def running_baseline(
    platform_url: str,
    workspaces: list[CreatedWorkspace],
    *,
    state_dir: Path,
    backend: BackendSpec | None = None,
    poll_interval_s: float = 1.0,
    heartbeat_interval_s: float = 30.0,
) -> AsyncIterator[list[BaselineConnector]]:
    """Run one :class:`BaselineConnector` per workspace in this process for the ``async with`` block.

    One pooled ``httpx.AsyncClient`` and one backend are shared, as the connector's worker shares them; the client
    is the worker's own (:func:`worker.http.platform_client`, on aiohttp's pool), so a ratio to the baseline measures
    the delivery engine, not two HTTP stacks.
    """
    spec = backend or BackendSpec()
    shared_backend = create_backend(spec.name, spec.options)
    limits = httpx.Limits(max_connections=max(2 * len(workspaces), 10), max_keepalive_connections=64)
    async with platform_client(timeout=HTTP_TIMEOUT, limits=limits) as http:
        connectors = [
            BaselineConnector(
                http,
                platform_url=platform_url,
                workspace=workspace,
                cursor_file=CursorFile(state_dir / f"{workspace.id}.json"),
                backend=shared_backend,
                poll_interval_s=poll_interval_s,
                heartbeat_interval_s=heartbeat_interval_s,
            )
            for workspace in workspaces
        ]
        tasks = [
            asyncio.create_task(c.run(), name=f"baseline-{w.id}") for c, w in zip(connectors, workspaces, strict=True)
        ]
        try:
            yield connectors
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise RuntimeError("a baseline connector died") from task.exception()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await shared_backend.close()
