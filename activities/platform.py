"""``PlatformActivities``: every call to the Molecule platform, over one shared ``httpx.AsyncClient``.

Activities: ``register`` (PROTOCOL.md §3.1), ``heartbeat`` (long-running, §3.2), ``poll`` (long-poll of the inbox,
§3.3–4) and ``reply`` (§3.4 to a peer, §3.5 to the canvas); :meth:`PlatformActivities.read_body` re-reads, inside
``dispatch``, a body the poll passed by reference. Failures are raised as ``ApplicationError`` typed by
``activities.errors`` (PROTOCOL.md §2). Tokens are looked up per call from the workspace id and exist only in request
headers: never in arguments, results, errors or logs.

Large bodies never enter history: a deliverable row whose ``request_body`` is over :data:`BODY_REF_BYTES` is
returned by ``poll`` as a reference (``PolledRow.body_ref``: its message without parts, and where to re-read it),
and ``dispatch`` re-reads the body from the platform just before running the backend.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import orjson
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.a2a import (
    MalformedMessageError,
    TextPart,
    build_reply_request,
    parse_inbound,
    reply_message_id,
)
from activities.budget import Priority
from activities.errors import ErrorType, classify_response, retry_after, transport_error
from activities.messages import (
    BodyRef,
    HeartbeatInput,
    HeartbeatResult,
    PlatformTarget,
    PolledRow,
    PollInput,
    PollResult,
    RegisterInput,
    RegisterResult,
    ReplyInput,
    ReplyResult,
    RowPointer,
)
from activities.planner import RequestBudgets

INBOX_TYPE = "a2a_receive"
DISPATCHED_METHODS = frozenset({"message/send", "message/stream"})
RESET_READ_LIMIT = 500
"""Rows re-read (newest first) after a 410 or without a cursor: the platform's maximum ``limit``."""
MAX_BATCH_BYTES = 768 * 1024
"""A poll result's rows stay under this many JSON bytes, well inside Temporal's 2 MiB payload limit (rest: next
poll). One carried row is at most :data:`BODY_REF_BYTES` + :data:`TEXT_COPY_BYTES`, so a row always fits."""
BODY_REF_BYTES = 256 * 1024
"""A deliverable row whose ``request_body`` is over this many JSON bytes is passed by reference: ``poll`` returns its
message without parts plus a ``BodyRef``, and ``dispatch`` re-reads the body (:meth:`PlatformActivities.read_body`).
Whatever a sender posts (the platform accepts up to 16 MiB), no body over this enters workflow history."""
REF_MESSAGE_BYTES = 16 * 1024
"""The parts-less message of a reference is carried without its ``metadata`` when larger than this (the backend
still sees the metadata: ``dispatch`` re-reads the whole message); a reference whose ids alone are larger is
``malformed``."""
TEXT_COPY_BYTES = 64 * 1024
"""Text over this is carried once, in ``message.parts``, and not copied into ``PolledRow.text`` as well."""
MAX_QUOTED_CHARS = 200
"""A row's ``method`` and the skip reasons quoting it are cut to this many characters: the sender chooses the method,
and a huge one must not grow a poll result past Temporal's payload limit."""
BUDGET_HEARTBEAT_S = 5.0
"""While a request waits for the request budget, Temporal is heartbeated this often, so a long queue never looks
like a dead worker (the poll's ``heartbeat_timeout`` is 30 s + ``poll_interval_s``)."""

TokenLookup = Callable[[str], str]
"""``workspace_id -> token``; raises ``LookupError`` or ``ValueError`` (``worker.secrets.TokenError``) when it cannot
answer, with a message that holds no secret."""


def _parse_time(value: Any) -> datetime | None:
    """Parse the platform's ISO-8601 ``created_at`` (``Z`` suffix accepted); ``None`` when absent or bad."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


async def _pause(seconds: float) -> bool:
    """Sleep ``seconds`` inside an activity, waking early when the worker shuts down.

    Returns:
        ``True`` when the worker is shutting down: long-running duties (poll, heartbeat) then return at once, so a
        graceful shutdown only waits for dispatches; the workflow schedules the next run on whichever worker is up.
    """
    if activity.is_worker_shutdown():
        return True
    shutdown = asyncio.ensure_future(activity.wait_for_worker_shutdown())
    try:
        await asyncio.wait({shutdown}, timeout=seconds)
    finally:
        shutdown.cancel()
    return activity.is_worker_shutdown()


def _clipped(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def row_to_polled(row: dict[str, Any], *, read_after: str | None = None) -> PolledRow:
    """Apply the skip rules of PROTOCOL.md §4 and parse one inbox row.

    Args:
        row: One element of ``GET /workspaces/{id}/activity`` (JSON object).
        read_after: Id of the inbox row just before this one, or ``None`` when unknown; kept in ``body_ref`` when the
            body is passed by reference, so ``dispatch`` can re-read it with ``since_id`` (see ``BodyRef``).

    Returns:
        A ``PolledRow`` whose ``outcome`` is ``deliver`` (with message and text; a body over :data:`BODY_REF_BYTES`
        as a reference: ``body_ref`` set, message without parts, no text), ``skip`` (notify echo, error row, already
        answered by push, unknown method, no content) or ``malformed`` (a body that cannot be parsed, or a
        reference whose message ids alone are over :data:`REF_MESSAGE_BYTES`).
    """
    row_id = str(row.get("id"))
    method = row.get("method")
    common: dict[str, Any] = {
        "row_id": row_id,
        "created_at": _parse_time(row.get("created_at")),
        "source_id": row.get("source_id"),
        "method": _clipped(method) if isinstance(method, str) else method,
    }
    body = row.get("request_body")
    body_bytes = len(orjson.dumps(body)) if body is not None else 0
    common["body_bytes"] = body_bytes

    def skip(reason: str) -> PolledRow:
        return PolledRow(**common, outcome="skip", reason=_clipped(reason))

    if row.get("activity_type", INBOX_TYPE) != INBOX_TYPE:
        return skip(f"activity_type {row.get('activity_type')!r} is not {INBOX_TYPE}")
    if method == "notify":
        return skip("own canvas reply (notify echo)")
    if row.get("status") == "error":
        return skip("row status is error")
    if row.get("response_body") is not None:
        return skip("already answered (push delivery)")
    if method not in DISPATCHED_METHODS:
        return skip(f"unknown method {method!r}")
    if body is None:
        return skip("no request_body")
    try:
        parsed = parse_inbound(body)
    except MalformedMessageError as err:
        return PolledRow(**common, outcome="malformed", reason=err.reason)
    depth = (parsed.message.metadata or {}).get("auto_reply_depth", 0)
    deliver: dict[str, Any] = {
        "outcome": "deliver",
        "unsupported_parts": parsed.unsupported_parts,
        "auto_reply_depth": depth if isinstance(depth, int) and depth >= 0 else 0,
    }
    if body_bytes <= BODY_REF_BYTES:
        text = "" if len(parsed.text.encode()) > TEXT_COPY_BYTES else parsed.text
        return PolledRow(**common, **deliver, message=parsed.message, text=text)
    message = parsed.message.model_copy(update={"parts": []})
    carried = len(message.model_dump_json(by_alias=True))
    if carried > REF_MESSAGE_BYTES:
        message = message.model_copy(update={"metadata": None})
        carried = len(message.model_dump_json(by_alias=True))
    if carried > REF_MESSAGE_BYTES:
        return PolledRow(
            **common,
            outcome="malformed",
            reason=f"message ids too large: {carried} bytes without parts and metadata (at most {REF_MESSAGE_BYTES})",
        )
    return PolledRow(
        **{**common, "body_bytes": carried},
        **deliver,
        message=message,
        body_ref=BodyRef(read_after=read_after, body_bytes=body_bytes),
    )


def rows_to_polled(
    rows: list[dict[str, Any]], *, read_after: str | None, not_before: datetime | None = None
) -> list[PolledRow]:
    """Parse a batch read from the inbox, giving each row its predecessor for ``BodyRef.read_after``.

    The predecessor of the first row is ``read_after``; of each other row, the row before it in ``rows`` (every
    ``a2a_receive`` row the platform returned, including rows then skipped or left out by ``not_before``).

    Args:
        rows: Inbox rows oldest first (an ASC read, or a DESC read already reversed).
        read_after: The row before ``rows[0]``: the ``since_id`` cursor of an ASC read; ``None`` for a newest-first
            read without a cursor, whose oldest row has no known predecessor.
        not_before: Only rows created at or after this are returned (rows without a ``created_at`` are kept).

    Returns:
        The parsed rows, oldest first.
    """
    polled = []
    for row in rows:
        created_at = _parse_time(row.get("created_at"))
        if not_before is None or created_at is None or created_at >= not_before:
            polled.append(row_to_polled(row, read_after=read_after))
        read_after = str(row["id"])
    return polled


class RowNotFoundError(LookupError):
    """A row passed by reference is no longer on the platform, so its body cannot be re-read.

    Attributes:
        reason: One line for the dead letter and the sender's error reply; no body, no token.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PlatformActivities:
    """The platform's HTTP surface as Temporal activities.

    One instance per worker process. The ``httpx.AsyncClient`` is built and closed by the worker assembly; it has
    explicit timeouts and pool limits sized to activity concurrency.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        token_for: TokenLookup,
        *,
        org_id: str | None = None,
        agent_version: str = "0",
        budgets: RequestBudgets | None = None,
    ) -> None:
        """Create the activities.

        Args:
            http: Shared client (not owned: the caller closes it).
            token_for: Token lookup by workspace id.
            org_id: Sent as ``X-Molecule-Org-Id`` when set (hosted platforms, PROTOCOL.md §2).
            agent_version: ``agent_card.version`` sent on register.
            budgets: The worker process's request budgets and read planners per platform (``activities.planner``);
                unlimited when ``None``.
        """
        self._http = http
        self._token_for = token_for
        self._org_id = org_id
        self._agent_version = agent_version
        self._budgets = budgets if budgets is not None else RequestBudgets(per_minute=0)

    # --- plumbing ---------------------------------------------------------------------------------------------

    def _headers(self, target: PlatformTarget, *, body: bool = False) -> dict[str, str]:
        """Auth and tenant headers for one request (PROTOCOL.md §2); raises ``Auth`` when no token is known."""
        try:
            token = self._token_for(target.workspace_id)
        except (LookupError, ValueError) as err:
            raise ApplicationError(str(err), type=ErrorType.AUTH, non_retryable=True) from None
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json", "Origin": target.platform_url}
        if body:
            headers["Content-Type"] = "application/json"
        if self._org_id:
            headers["X-Molecule-Org-Id"] = self._org_id
        return headers

    async def _request(
        self,
        operation: str,
        method: str,
        target: PlatformTarget,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        extra_headers: dict[str, str] | None = None,
        priority: Priority = Priority.WORK,
    ) -> httpx.Response:
        """Send one request within the platform's request budget; return the response whatever its status.

        ``priority`` orders requests waiting for the budget: heartbeats, then replies and register, then inbox reads.
        A ``429`` lowers the budget's rate for a while (``RequestBudget.throttled``). Network errors raise
        ``Transient``.
        """
        headers = self._headers(target, body=json_body is not None)
        headers.update(extra_headers or {})
        content = orjson.dumps(json_body) if json_body is not None else None
        await self._spend(target, priority)
        try:
            response = await self._http.request(
                method, f"{target.platform_url}{path}", content=content, params=params, headers=headers
            )
        except httpx.HTTPError as err:
            raise transport_error(operation, err) from None
        if response.status_code == 429:
            delay = retry_after(response)
            self._budgets.for_url(target.platform_url).throttled(delay.total_seconds() if delay else None)
        return response

    async def _spend(self, target: PlatformTarget, priority: Priority) -> None:
        """Take one request from the platform's budget, heartbeating Temporal while queued for it."""
        budget = self._budgets.for_url(target.platform_url)
        self._budgets.planner_for(target.platform_url).note_request(target.workspace_id, priority)
        if budget.try_acquire(priority):
            return
        acquire = asyncio.ensure_future(budget.acquire(priority))
        try:
            while not (await asyncio.wait({acquire}, timeout=BUDGET_HEARTBEAT_S))[0]:
                if not activity.info().is_local:
                    activity.heartbeat()
        finally:
            acquire.cancel()  # no-op once acquired; otherwise leaves the queue (we are being cancelled)
        acquire.result()

    # --- register / heartbeat ---------------------------------------------------------------------------------

    @activity.defn(name="register")
    async def register(self, input: RegisterInput) -> RegisterResult:
        """Register the workspace in poll mode: ``POST /registry/register`` (PROTOCOL.md §3.1).

        Idempotent upsert: status becomes ``online``. A bootstrap ``auth_token`` in the answer is never returned.

        Raises:
            ApplicationError: ``Transient`` (retried), ``Auth``, ``Gone`` or ``Permanent``.
        """
        body = {
            "id": input.target.workspace_id,
            "delivery_mode": "poll",
            "agent_card": {
                "name": input.agent_name,
                "description": "External agent attached by molecule-connect (Temporal)",
                "version": self._agent_version,
            },
        }
        response = await self._request("register", "POST", input.target, "/registry/register", json_body=body)
        if response.status_code >= 300:
            raise classify_response("register", response)
        try:
            data = orjson.loads(response.content or b"{}")
        except orjson.JSONDecodeError:
            data = {}
        data = data if isinstance(data, dict) else {}
        activity.logger.info("registered", extra={"workspace_id": input.target.workspace_id})
        return RegisterResult(delivery_mode=str(data.get("delivery_mode", "poll")))

    @activity.defn(name="heartbeat")
    async def heartbeat(self, input: HeartbeatInput) -> HeartbeatResult:
        """Post ``POST /registry/heartbeat`` every ``interval_s`` for ``run_for_s``, heartbeating Temporal each beat.

        Long-running so that a connected workspace costs a few history events per hour. A transient platform failure
        is counted and retried at the next beat (a beat is never worth failing the duty for); ``Retry-After`` shortens
        nothing, as the next beat is at most ``interval_s`` away.

        Returns:
            Beats posted and transient failures, once ``run_for_s`` has elapsed.

        Raises:
            ApplicationError: ``Auth`` (401/403, no token) or ``Gone`` (404/410): the workflow pauses the duty.
            asyncio.CancelledError: The workflow cancelled the duty (continue-as-new, drain).
        """
        started = time.monotonic()
        beats = failures = 0
        body = {"workspace_id": input.target.workspace_id}
        while True:
            response: httpx.Response | None = None
            try:
                response = await self._request(
                    "heartbeat",
                    "POST",
                    input.target,
                    "/registry/heartbeat",
                    json_body={**body, "uptime_seconds": int(time.monotonic() - started)},
                    priority=Priority.HEARTBEAT,
                )
            except ApplicationError as err:
                if err.type != ErrorType.TRANSIENT:
                    raise
            if response is not None and response.status_code < 300:
                beats += 1
            else:
                if response is not None:
                    error = classify_response("heartbeat", response)
                    if error.type != ErrorType.TRANSIENT:
                        raise error
                failures += 1
                activity.logger.warning(
                    "heartbeat failed", extra={"workspace_id": input.target.workspace_id, "failures": failures}
                )
            activity.heartbeat(beats, failures)
            if time.monotonic() - started >= input.run_for_s:
                return HeartbeatResult(beats=beats, failures=failures)
            # A failed beat is retried sooner (5 s), but never later than the next regular beat would be.
            ok = response is not None and response.status_code < 300
            if await _pause(input.interval_s if ok else min(input.interval_s, 5.0)):
                return HeartbeatResult(beats=beats, failures=failures)

    # --- poll -------------------------------------------------------------------------------------------------

    async def _get_inbox(
        self,
        target: PlatformTarget,
        params: dict[str, Any],
        *,
        operation: str = "poll",
        priority: Priority = Priority.POLL,
    ) -> httpx.Response:
        return await self._request(
            operation,
            "GET",
            target,
            f"/workspaces/{target.workspace_id}/activity",
            params={"type": INBOX_TYPE, **params},
            priority=priority,
        )

    def _rows(self, response: httpx.Response, operation: str = "poll") -> list[dict[str, Any]]:
        if response.status_code >= 300:
            raise classify_response(operation, response)
        try:
            data = orjson.loads(response.content or b"[]")
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, list):
            raise ApplicationError(f"{operation}: inbox answer is not a JSON array", type=ErrorType.TRANSIENT)
        return [row for row in data if isinstance(row, dict) and row.get("id")]

    async def _read_newest(self, target: PlatformTarget, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` rows, oldest first (the platform answers DESC without a cursor, PROTOCOL.md §3.3)."""
        rows = self._rows(await self._get_inbox(target, {"limit": limit}))
        rows.reverse()
        return rows

    async def _poll_once(self, input: PollInput) -> PollResult | None:
        """One inbox read. ``None`` when there is nothing to report and the long poll should go on."""
        target = input.target
        cursor = input.cursor
        if cursor is not None and not _is_uuid(cursor.row_id):
            # A non-UUID cursor gets a 500 on every poll (PROTOCOL.md §3.3): treat it as lost, like a 410.
            activity.logger.warning("cursor is not a UUID; resetting", extra={"workspace_id": target.workspace_id})
            rows = await self._read_newest(target, RESET_READ_LIMIT)
            return PollResult(
                rows=rows_to_polled(rows, read_after=None, not_before=cursor.created_at), cursor_reset=True
            )
        if cursor is not None:
            response = await self._get_inbox(target, {"since_id": cursor.row_id, "limit": input.limit})
            if response.status_code == 410:
                activity.logger.warning(
                    "cursor not found (410); re-reading newest rows",
                    extra={"workspace_id": target.workspace_id, "row_id": cursor.row_id},
                )
                rows = await self._read_newest(target, RESET_READ_LIMIT)
                polled = rows_to_polled(rows, read_after=None, not_before=cursor.created_at)
                return PollResult(rows=polled, cursor_reset=True)
            rows = self._rows(response)
            return PollResult(rows=rows_to_polled(rows, read_after=cursor.row_id)) if rows else None
        if not input.seeded:
            if input.start_from == "latest":
                newest = await self._read_newest(target, 1)
                seed = (
                    RowPointer(row_id=str(newest[-1]["id"]), created_at=_parse_time(newest[-1].get("created_at")))
                    if newest
                    else None
                )
                return PollResult(seed=seed, cold_start_done=True)
            rows = await self._read_newest(target, min(max(input.backlog_limit, 1), RESET_READ_LIMIT))
            return PollResult(rows=rows_to_polled(rows, read_after=None), cold_start_done=True)
        # Seeded without a cursor: the inbox was empty (or reset) then, so every row since is new.
        rows = await self._read_newest(target, RESET_READ_LIMIT)
        polled = rows_to_polled(rows, read_after=None, not_before=input.not_before)
        return PollResult(rows=polled) if polled else None

    @staticmethod
    def _bounded(result: PollResult) -> PollResult:
        """Cut a batch so its rows stay under ``MAX_BATCH_BYTES`` of JSON; the rest comes on the next poll.

        Rows are measured as they cross Temporal (carried bodies, text copies, references), not by their bodies on
        the platform: a batch of references to 16 MiB bodies is small.
        """
        total = 0
        for index, row in enumerate(result.rows):
            total += len(row.model_dump_json())
            if total > MAX_BATCH_BYTES and index > 0:
                return result.model_copy(update={"rows": result.rows[:index]})
        return result

    @activity.defn(name="poll")
    async def poll(self, input: PollInput) -> PollResult:
        """Long-poll the inbox until rows arrive or ``max_wait_s`` passes (PROTOCOL.md §3.3–4).

        Reads ``GET /workspaces/{id}/activity?type=a2a_receive&since_id=<cursor>`` every ``poll_interval_s`` and
        heartbeats Temporal on each pass, so polling costs no history. Without a cursor, applies the cold start
        (``latest``: seed at the newest row; ``backlog``: the newest ``backlog_limit`` rows, oldest first). On a 410,
        re-reads the newest rows without a cursor and keeps those created at or after the cursor row (the workflow's
        dedupe window drops anything already seen).

        Each read waits for its turn from the platform's read planner (``activities.planner``): every
        ``poll_interval_s`` however long the inbox has been quiet while the request budget has room, less often and
        in round-robin order only when the worker's inboxes together want more reads than the budget leaves.

        Returns:
            Rows oldest first (skip rules applied), possibly empty after ``max_wait_s``.

        Raises:
            ApplicationError: ``Transient`` (retried with backoff, ``Retry-After`` honoured), ``Auth``, ``Gone``.
            asyncio.CancelledError: The workflow cancelled the poll (pause, cursor change, continue-as-new).
        """
        deadline = time.monotonic() + input.max_wait_s
        workspace_id = input.target.workspace_id
        planner = self._budgets.planner_for(input.target.platform_url)
        polls = 0
        try:
            while True:
                if await self._read_turn(input.target, input.poll_interval_s, deadline if polls else None):
                    return PollResult(polls=polls)
                polls += 1
                result = await self._poll_once(input)
                activity.heartbeat(polls)
                if result is not None:
                    if result.rows:
                        planner.note_rows(workspace_id)
                    return self._bounded(result).model_copy(update={"polls": polls})
                if time.monotonic() + input.poll_interval_s >= deadline:
                    return PollResult(polls=polls)
        finally:
            planner.done(workspace_id)

    async def _read_turn(self, target: PlatformTarget, poll_interval_s: float, deadline: float | None) -> bool:
        """Wait for the read planner's go for the next read of ``target``'s inbox, heartbeating Temporal meanwhile.

        Args:
            target: Our workspace.
            poll_interval_s: The connector's ``poll_interval_s``.
            deadline: ``time.monotonic()`` by which to give up; ``None``: wait as long as it takes.

        Returns:
            ``True`` when the caller should stop instead of reading: the deadline passed or the worker is shutting
            down (the turn is kept: the next long poll of this inbox is served first).
        """
        if activity.is_worker_shutdown():
            return True
        turn = asyncio.ensure_future(
            self._budgets.planner_for(target.platform_url).wait_for_read(target.workspace_id, poll_interval_s)
        )
        shutdown = asyncio.ensure_future(activity.wait_for_worker_shutdown())
        try:
            while True:
                timeout = BUDGET_HEARTBEAT_S
                if deadline is not None:
                    timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    return True
                done, _ = await asyncio.wait({turn, shutdown}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if turn in done:
                    turn.result()
                    return False
                if shutdown in done:
                    return True
                activity.heartbeat()
        finally:
            turn.cancel()  # no-op once granted; otherwise leaves the planner's queue
            shutdown.cancel()

    # --- re-read a body passed by reference --------------------------------------------------------------------

    async def read_body(self, target: PlatformTarget, row: PolledRow) -> Any:
        """Re-read the ``request_body`` of a row ``poll`` passed by reference (``PolledRow.body_ref``).

        Called by ``dispatch``, within the platform's request budget. The platform has no single-row read
        (PROTOCOL.md §3.3), so the row is read as the one after its predecessor,
        ``GET /workspaces/{id}/activity?type=a2a_receive&since_id=<read_after>&limit=1``, and its ``id`` checked.
        When there is no known predecessor, the predecessor was pruned (410) or another row (or none) comes back,
        the row is looked for among the newest :data:`RESET_READ_LIMIT` rows: a row without a known predecessor
        can only be re-read while it is among the newest 500 of the inbox.

        Args:
            target: Our workspace.
            row: A row whose ``body_ref`` is set.

        Returns:
            The row's ``request_body`` as stored by the platform (decoded JSON; parse it with ``parse_inbound``).

        Raises:
            RowNotFoundError: The row is no longer on the platform (pruned, or no longer among the newest rows).
            ApplicationError: ``Transient`` (network, 5xx, 429: retryable, ``Retry-After`` honoured), ``Auth``
                (401/403, no token) or ``Gone`` (404 on our workspace), classified like every platform call.
        """
        ref = row.body_ref
        if ref is None:
            raise ValueError(f"row {row.row_id} was not passed by reference")
        operation = "re-read message body"
        log_extra = {"workspace_id": target.workspace_id, "row_id": row.row_id}
        if ref.read_after is not None:
            params = {"since_id": ref.read_after, "limit": 1}
            response = await self._get_inbox(target, params, operation=operation, priority=Priority.WORK)
            if response.status_code != 410:
                rows = self._rows(response, operation)
                if rows and str(rows[0]["id"]) == row.row_id:
                    return rows[0].get("request_body")
            activity.logger.warning(
                "message body not after its predecessor; searching the newest rows", extra=log_extra
            )
        response = await self._get_inbox(
            target, {"limit": RESET_READ_LIMIT}, operation=operation, priority=Priority.WORK
        )
        found = next((r for r in self._rows(response, operation) if str(r["id"]) == row.row_id), None)
        if found is not None:
            return found.get("request_body")
        if ref.read_after is not None:
            raise RowNotFoundError("message body no longer on the platform (pruned); cannot re-read")
        raise RowNotFoundError(
            f"message body not among the newest {RESET_READ_LIMIT} inbox rows (pruned or too old); cannot re-read"
        )

    # --- reply ------------------------------------------------------------------------------------------------

    @activity.defn(name="reply")
    async def reply(self, input: ReplyInput) -> ReplyResult:
        """Send the reply for one inbound row (PROTOCOL.md §1.5); see :meth:`send_reply`."""
        return await self.send_reply(input)

    async def send_reply(self, input: ReplyInput) -> ReplyResult:
        """Send the reply for one inbound row (PROTOCOL.md §1.5), inside any activity (``reply``, ``dispatch``).

        From a peer (``source_id`` set): a new ``message/send`` to ``POST /workspaces/{source_id}/a2a`` in the v0.3
        reply shape of PROTOCOL.md §5, with a deterministic ``messageId`` (UUIDv5 of workspace + row), so a retried
        reply is stored once. From the canvas: ``POST /workspaces/{self}/notify`` with the text.

        Raises:
            ApplicationError: ``Transient`` (retried), ``Auth`` (our token), ``Permanent`` (the peer refused it; 404
                on a peer is permanent, not ``Gone``).
        """
        target, row = input.target, input.row
        if row.source_id is None:
            text = "\n".join(p.text for p in input.parts if isinstance(p, TextPart))
            attachments = [
                {
                    "uri": p.file.uri,
                    "name": p.file.name or p.file.uri,
                    **({"mimeType": p.file.mime_type} if p.file.mime_type else {}),
                }
                for p in input.parts
                if p.kind == "file" and p.file.uri
            ]
            body: dict[str, Any] = {"message": text or "(no text)"}
            if attachments:
                body["attachments"] = attachments
            response = await self._request(
                "reply to canvas", "POST", target, f"/workspaces/{target.workspace_id}/notify", json_body=body
            )
            if response.status_code >= 300:
                raise classify_response("reply to canvas", response)
            return ReplyResult(destination="canvas")

        message_id = reply_message_id(target.workspace_id, row.row_id, error=input.is_error)
        metadata: dict[str, Any] = {"auto_reply": True, "auto_reply_depth": row.auto_reply_depth + 1}
        if input.is_error:
            metadata["error"] = True
        request = build_reply_request(
            message_id=message_id,
            request_id=message_id,
            parts=list(input.parts),
            in_reply_to=row.message,  # None for a malformed body: answered without conversation context
            row_id=row.row_id,
            extra_metadata=metadata,
        )
        operation = f"reply to {row.source_id}"
        response = await self._request(
            operation,
            "POST",
            target,
            f"/workspaces/{row.source_id}/a2a",
            json_body=request,
            extra_headers={"X-Workspace-ID": target.workspace_id},
        )
        if response.status_code >= 300:
            raise classify_response(operation, response, own_workspace=False)
        return ReplyResult(destination="peer", message_id=message_id)
