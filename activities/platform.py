"""``PlatformActivities``: every call to the Molecule platform, over one shared ``httpx.AsyncClient``.

Activities: ``register`` (docs/protocol.md §3.1), ``session`` (long-running: platform heartbeats, §3.2, and the long
poll of the inbox, §3.3–4, in one activity per workspace), ``check_cursor`` (is a row in the inbox, for the
``set_cursor`` update) and ``reply`` (§3.4 to a peer, §3.5 to the canvas). ``heartbeat`` and ``poll`` are the two
activities ``session`` replaced; they stay registered for connectors started before it. :meth:`read_body` re-reads,
inside ``dispatch``, a body the poll passed by reference.

Failures are raised as ``ApplicationError`` typed by ``activities.errors`` (docs/protocol.md §2). Tokens are looked
up per call from the workspace id and exist only in request headers: never in arguments, results, errors or logs
(error text built from an answer is redacted, ``activities.errors.redact``). A worker that holds no token for a
workspace fails the activity with ``TokenMissing``, retried soon, so another worker of the task queue takes it.

Large bodies never enter history: a deliverable row whose ``request_body`` is over ``BODY_REF_BYTES`` is returned by
the poll as a reference (``PolledRow.body_ref``) and ``dispatch`` re-reads it just before running the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import ResetStickyTaskQueueRequest
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.a2a import TextPart, build_reply_request, reply_message_id
from activities.budget import Priority
from activities.errors import (
    TOKEN_HANDOFF,
    TOKEN_RETRY_DELAY,
    ErrorType,
    classify_response,
    retry_after,
    transport_error,
)
from activities.inbox import (
    INBOX_TYPE,
    MAX_BATCH_BYTES,
    RESET_READ_LIMIT,
    InboxFormatError,
    InboxRow,
    decode_inbox,
    is_uuid,
    parse_time,
    rows_to_polled,
)
from activities.messages import (
    ActivityName,
    AgentReport,
    CheckCursorInput,
    HeartbeatInput,
    HeartbeatResult,
    PlatformTarget,
    PlatformTrouble,
    PolledRow,
    PollInput,
    PollResult,
    RegisterInput,
    RegisterResult,
    ReplyInput,
    ReplyResult,
    RowPointer,
    SessionInput,
    SessionResult,
)
from activities.planner import RequestBudgets
from activities.shutdown import sleep_until_shutdown as _pause

BUDGET_HEARTBEAT_S = 5.0
"""While a request of a regular activity (``reply``, ``dispatch``) waits for the request budget, Temporal is
heartbeated this often, so a long queue never looks like a dead worker (inside a session its pulse does it)."""
BEAT_GRACE_S = 5.0
"""A session ending (rows read, ``run_for_s``) waits up to this long for a platform beat it already sent."""
UNSTICK_TIMEOUT_S = 5.0
"""Time allowed for ``ResetStickyTaskQueue`` when a retried session moves its workflow off the lost worker."""
SESSION_HEARTBEAT_RATIO = 1.2
"""A session's Temporal heartbeat timeout is this × its heartbeat cadence (``workflows.calls``): one missed
heartbeat plus 20 % means the worker is gone."""
TRANSIENT_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
"""Pauses between the session's retries of a failing inbox read (then 30 s), unless ``Retry-After`` says more."""
NOTIFY_SKEW_S = 10.0
"""Clock difference allowed between a worker and the platform when looking for a notify's echo row."""
NOTIFY_ECHO_LIMIT = 100
"""Newest inbox rows searched for a notify's echo row."""
TOKEN_NOTICE_S = 300.0
"""A worker without a workspace's token says so at most once per this many seconds per workspace."""

TokenLookup = Callable[[str], str]
"""``workspace_id -> token``; raises ``LookupError`` or ``ValueError`` (``worker.secrets.TokenError``) when it cannot
answer, with a message that holds no secret."""

logger = logging.getLogger(__name__)

_IN_SESSION: contextvars.ContextVar[bool] = contextvars.ContextVar("in_session", default=False)
"""Set inside ``session``: its pulse heartbeats Temporal, so a request queued for the budget must not (an extra
heartbeat would shift the pulse's heartbeats under the SDK's throttle)."""


class RowNotFoundError(LookupError):
    """A row passed by reference is no longer on the platform, so its body cannot be re-read.

    Attributes:
        reason: One line for the dead letter and the sender's error reply; no body, no token.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _now() -> datetime:
    return datetime.now(UTC)


class _Beats:
    """Heartbeat bookkeeping of one session: counts, the last accepted beat, the beat in flight, a lasting failure."""

    def __init__(self, last_beat_at: datetime | None) -> None:
        self.beats = 0
        self.failures = 0
        self.last_beat_at = last_beat_at
        self.failing_since: datetime | None = None
        self.failing_attempts = 0
        self.last_error = ""
        self.fatal: BaseException | None = None
        """An auth, gone or permanent failure of a beat: it ends the session."""
        self.in_flight: asyncio.Task[httpx.Response | None] | None = None
        """The platform beat sent and not answered yet; its outcome is recorded when it settles."""

    def ok(self) -> None:
        self.beats += 1
        self.last_beat_at = _now()
        self.failing_since = None
        self.failing_attempts = 0

    def failed(self, error: str) -> None:
        self.failures += 1
        self.failing_since = self.failing_since or _now()
        self.failing_attempts += 1
        self.last_error = error

    def send(self, beat: asyncio.Task[httpx.Response | None]) -> None:
        """Track a beat just started: its outcome is recorded the moment it settles."""
        self.in_flight = beat
        beat.add_done_callback(self.settle)

    def settle(self, beat: asyncio.Task[httpx.Response | None]) -> None:
        """Record a settled beat's outcome (once: a done callback, and called directly by whoever awaited it)."""
        if beat is not self.in_flight:
            return
        self.in_flight = None
        if beat.cancelled():
            return
        error = beat.exception()
        if error is not None:
            self.fatal = error
        elif beat.result() is not None:
            self.ok()
        else:
            self.failed("heartbeat failed (network error, timeout or 5xx)")

    async def finish(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for the beat in flight and record it; cancel it if it is still unanswered.

        A session that ends (rows read, ``run_for_s``) while a beat is on its way must not abandon it: the platform
        may accept it, and the next session, not knowing, would beat again at once, or, had it been cancelled before
        it was sent, the workspace would go a whole interval longer without one.
        """
        beat = self.in_flight
        if beat is None:
            return
        if grace_s > 0:
            await asyncio.wait({beat}, timeout=grace_s)
        if beat.done():
            self.settle(beat)
            return
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
        self.in_flight = None


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
            org_id: Sent as ``X-Molecule-Org-Id`` when set (hosted platforms, docs/protocol.md §2).
            agent_version: ``agent_card.version`` sent on register.
            budgets: The worker process's request budgets and read planners per platform (``activities.planner``);
                unlimited when ``None``.
        """
        self._http = http
        self._token_for = token_for
        self._org_id = org_id
        self._agent_version = agent_version
        self._budgets = budgets if budgets is not None else RequestBudgets(per_minute=0)
        self._dispatching: dict[str, dict[str, str]] = {}
        """Workspace id → row id → what its dispatch is doing, for the ``active_tasks`` and ``current_task`` of the
        platform heartbeat. Only dispatches running in this process are known (all of them for a ``run``)."""
        self._token_notices: dict[str, float] = {}

    # --- plumbing ---------------------------------------------------------------------------------------------

    def _token(self, target: PlatformTarget) -> str:
        """The workspace's token.

        Raises:
            ApplicationError: ``TokenMissing``: retryable with a short delay, so another worker of the task queue
                (one that holds the token) takes the activity; non-retryable once the activity has been looking
                for such a worker for ``TOKEN_HANDOFF`` (the workflow then shows ``blocked`` with this reason).
        """
        try:
            return self._token_for(target.workspace_id)
        except (LookupError, ValueError) as err:
            info = activity.info()
            message = f"{err} (this worker serves task queue {info.task_queue})"
            now = time.monotonic()
            if now - self._token_notices.get(target.workspace_id, -TOKEN_NOTICE_S) >= TOKEN_NOTICE_S:
                self._token_notices[target.workspace_id] = now
                logger.warning(
                    "no token for workspace %s on task queue %s: handing its activities to another worker; "
                    "add it to MOLECULE_TOKENS_FILE",
                    target.workspace_id,
                    info.task_queue,
                    extra={"workspace_id": target.workspace_id},
                )
            searching = _now() - info.scheduled_time
            if info.is_local or searching >= TOKEN_HANDOFF:
                raise ApplicationError(message, type=ErrorType.TOKEN_MISSING, non_retryable=True) from None
            raise ApplicationError(message, type=ErrorType.TOKEN_MISSING, next_retry_delay=TOKEN_RETRY_DELAY) from None

    def _headers(self, target: PlatformTarget, *, body: bool = False) -> dict[str, str]:
        """Auth and tenant headers for one request (docs/protocol.md §2); raises ``TokenMissing`` (see _token)."""
        headers = {
            "Authorization": f"Bearer {self._token(target)}",
            "Accept": "application/json",
            "Origin": target.platform_url,
        }
        if body:
            headers["Content-Type"] = "application/json"
        if self._org_id:
            headers["X-Molecule-Org-Id"] = self._org_id
        return headers

    def check_token(self, target: PlatformTarget) -> None:
        """Fail with ``TokenMissing`` unless this worker holds the workspace's token (see :meth:`_token`).

        ``dispatch`` calls it before running a backend, so a worker that could not send the reply hands the message
        to one that can instead of running the backend for nothing.
        """
        self._token(target)

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
                if not activity.info().is_local and not _IN_SESSION.get():
                    activity.heartbeat()
        finally:
            acquire.cancel()  # no-op once acquired; otherwise leaves the queue (we are being cancelled)
        acquire.result()

    @contextlib.contextmanager
    def tracking_dispatch(self, workspace_id: str, row_id: str, doing: str) -> Iterator[None]:
        """Count a dispatch as an active task of its workspace while the block runs (for the platform heartbeat).

        Args:
            workspace_id: The workspace.
            row_id: The inbound row being dispatched.
            doing: ``current_task`` text, e.g. ``replying to <peer>``; never message content.
        """
        tasks = self._dispatching.setdefault(workspace_id, {})
        tasks[row_id] = doing
        try:
            yield
        finally:
            tasks.pop(row_id, None)
            if not tasks:
                self._dispatching.pop(workspace_id, None)

    # --- register / heartbeat ---------------------------------------------------------------------------------

    @activity.defn(name=ActivityName.REGISTER)
    async def register(self, input: RegisterInput) -> RegisterResult:
        """Register the workspace in poll mode: ``POST /registry/register`` (docs/protocol.md §3.1).

        Idempotent upsert: status becomes ``online``. A bootstrap ``auth_token`` in the answer is never returned.
        First reads the workspace (``GET /workspaces/{id}``, §3.6): when it is already ``online`` with a heartbeat
        this connector did not send (later than ``input.last_beat_at``, within the platform's 90 s stale window),
        ``RegisterResult.warning`` says another connector may be serving it. Nothing can prevent that across
        Temporal namespaces or clusters: the platform has no lease.

        Raises:
            ApplicationError: ``Transient`` (retried), ``Auth``, ``Gone``, ``Permanent`` or ``TokenMissing``.
        """
        warning = await self._other_connector(input)
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
        return RegisterResult(delivery_mode=str(data.get("delivery_mode", "poll")), warning=warning)

    async def _other_connector(self, input: RegisterInput) -> str | None:
        """The warning of :meth:`register` when someone else heartbeats the workspace; ``None`` when unsure."""
        target = input.target
        response = await self._request("read workspace", "GET", target, f"/workspaces/{target.workspace_id}")
        if response.status_code != 200:
            return None  # register itself reports auth, gone and outages
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict) or data.get("status") not in ("online", "degraded"):
            return None
        beat = parse_time(data.get("last_heartbeat_at"))
        if beat is None or _now() - beat > timedelta(seconds=90):
            return None
        if input.last_beat_at is not None and beat <= input.last_beat_at + timedelta(seconds=NOTIFY_SKEW_S):
            return None
        warning = (
            f"workspace was already online with a heartbeat at {beat.isoformat()} that this connector did not send: "
            "another connector (another Temporal namespace or cluster) may be serving it, so canvas replies could "
            "be sent twice; stop the other one"
        )
        activity.logger.warning(warning, extra={"workspace_id": target.workspace_id})
        return warning

    async def _beat(self, target: PlatformTarget, report: AgentReport) -> httpx.Response | None:
        """Post one ``POST /registry/heartbeat`` (docs/protocol.md §3.2); ``None`` when it failed transiently.

        ``runtime_state`` is left out (anything but empty would keep the workspace ``degraded``).

        Raises:
            ApplicationError: ``Auth``, ``Gone``, ``Permanent`` or ``TokenMissing``.
        """
        tasks = self._dispatching.get(target.workspace_id, {})
        body: dict[str, Any] = {
            "workspace_id": target.workspace_id,
            "active_tasks": len(tasks),
            "current_task": next(reversed(tasks.values()), ""),
            "error_rate": round(report.error_rate, 3),
        }
        if report.started_at is not None:
            body["uptime_seconds"] = max(0, int((_now() - report.started_at).total_seconds()))
        try:
            response = await self._request(
                "heartbeat", "POST", target, "/registry/heartbeat", json_body=body, priority=Priority.HEARTBEAT
            )
        except ApplicationError as err:
            if err.type != ErrorType.TRANSIENT:
                raise
            activity.logger.warning("heartbeat failed: %s", err.message, extra={"workspace_id": target.workspace_id})
            return None
        if response.status_code < 300:
            return response
        error = classify_response("heartbeat", response)
        if error.type != ErrorType.TRANSIENT:
            raise error
        activity.logger.warning("heartbeat failed: %s", error.message, extra={"workspace_id": target.workspace_id})
        return None

    @activity.defn(name=ActivityName.HEARTBEAT)
    async def heartbeat(self, input: HeartbeatInput) -> HeartbeatResult:
        """Post ``POST /registry/heartbeat`` every ``interval_s`` for ``run_for_s``, heartbeating Temporal each beat.

        Replaced by ``session``; kept for connectors started before it (their histories call it).

        Raises:
            ApplicationError: ``Auth`` (401/403), ``Gone`` (404/410) or ``TokenMissing``.
            asyncio.CancelledError: The workflow cancelled the duty (continue-as-new, drain).
        """
        started = time.monotonic()
        beats = failures = 0
        report = AgentReport(started_at=_now())
        while True:
            ok = await self._beat(input.target, report) is not None
            beats, failures = beats + ok, failures + (not ok)
            activity.heartbeat(beats, failures)
            if time.monotonic() - started >= input.run_for_s:
                return HeartbeatResult(beats=beats, failures=failures)
            # A failed beat is retried sooner (5 s), but never later than the next regular beat would be.
            if await _pause(input.interval_s if ok else min(input.interval_s, 5.0)):
                return HeartbeatResult(beats=beats, failures=failures)

    # --- the session: heartbeats and the inbox in one activity --------------------------------------------------

    @activity.defn(name=ActivityName.SESSION)
    async def session(self, input: SessionInput) -> SessionResult:
        """Keep a workspace attached: platform heartbeats, and the long poll of its inbox when ``input.poll`` is set.

        Heartbeats: ``POST /registry/heartbeat`` every ``heartbeat_interval_s`` (the first one due an interval after
        ``last_beat_at``), each right after a Temporal heartbeat. The Temporal heartbeat cadence is
        ``heartbeat_timeout / 1.2`` capped at ``heartbeat_interval_s``: with the default timeout (36 s) that is one
        Temporal heartbeat per platform beat (~120 billable actions an hour), and when the worker dies the activity
        times out within 36 s of its last beat and is retried on another worker, which beats at once: the platform
        sees a gap under ~40 s, inside its 90 s stale window (docs/guarantees.md §2, benchmarks/RESULTS.md). A retried
        session first moves its workflow off the lost worker's sticky queue (:meth:`_unstick`). A session that ends
        while a platform beat is on its way waits up to ``BEAT_GRACE_S`` for it and counts it, so the next session
        does not beat again at once (nor, had the beat been dropped unsent, an interval late).

        Inbox (with ``input.poll``): as the ``poll`` activity, reads ``GET /workspaces/{id}/activity`` every
        ``poll_interval_s`` (idle backoff of ``activities.budget``) and returns as soon as a read brings rows, a
        cold-start seed or a cursor reset. Transient failures (network, 5xx, 429 with its ``Retry-After``) are
        retried here with backoff, not by Temporal, so that one lasting ``trouble_after_s`` can be reported: the
        session then returns with ``trouble`` and the workflow shows it (phase ``degraded``).

        Returns:
            After rows (``poll``), after ``run_for_s`` without news, on lasting trouble, on recovery from it
            (``in_trouble``), or when the worker shuts down.

        Raises:
            ApplicationError: ``Auth``, ``Gone``, ``Permanent`` (from the inbox or a beat) or ``TokenMissing``.
            asyncio.CancelledError: The workflow cancelled the session (control change, continue-as-new, drain).
        """
        info = activity.info()
        if info.attempt > 1:
            await self._unstick(info)
        timeout = (info.heartbeat_timeout or timedelta(seconds=36)).total_seconds()
        cadence = max(min(input.heartbeat_interval_s, timeout / SESSION_HEARTBEAT_RATIO), 0.5)
        beats = _Beats(input.last_beat_at)
        _IN_SESSION.set(True)  # copied into the tasks below; this activity runs in its own context
        pulse = asyncio.create_task(self._pulse(input, beats, cadence))
        tasks: set[asyncio.Task[Any]] = {pulse}
        reader = asyncio.create_task(self._read_inbox(input, beats)) if input.poll is not None else None
        if reader is not None:
            tasks.add(reader)
        ended = False
        try:
            done, _ = await asyncio.wait(tasks, timeout=input.run_for_s, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raises Auth / Gone / TokenMissing
            ended = True
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Cancelled or failed: drop the beat in flight. Ended: let it land and count it (``_Beats.finish``).
            await beats.finish(BEAT_GRACE_S if ended else 0.0)
        news: PollResult | SessionResult | None = reader.result() if reader is not None and reader in done else None
        if pulse in done and pulse.result() is not None:
            news = pulse.result()
        if isinstance(news, SessionResult):
            return news.model_copy(update=self._beat_counts(beats))
        return SessionResult(poll=news, **self._beat_counts(beats))

    @staticmethod
    def _beat_counts(beats: _Beats) -> dict[str, Any]:
        return {"beats": beats.beats, "beat_failures": beats.failures, "last_beat_at": beats.last_beat_at}

    @staticmethod
    async def _unstick(info: activity.Info) -> None:
        """Send the workflow's next tasks to its task queue, not to the sticky queue of the worker that lost it.

        A session is retried when its worker died (its heartbeat timed out) or could not serve it. Its workflow is
        most likely cached on that same worker (the session was started there, eagerly), and Temporal hands a
        workflow's tasks to the worker that has it cached while that worker's poll is recent, even a dead or frozen
        one: the workflow task that takes in this session's rows would then wait there for the SDK's sticky timeout
        (10 s) before any other worker may run it (and no session runs meanwhile). ``ResetStickyTaskQueue``, which
        a worker shutting down gracefully sends itself, makes the next workflow task go to the task queue at once.
        Best effort: a failure is logged and the session goes on.
        """
        if info.is_local or not info.workflow_id:
            return
        request = ResetStickyTaskQueueRequest(
            namespace=info.namespace,
            execution=WorkflowExecution(workflow_id=info.workflow_id, run_id=info.workflow_run_id or ""),
        )
        try:
            await activity.client().workflow_service.reset_sticky_task_queue(
                request, timeout=timedelta(seconds=UNSTICK_TIMEOUT_S)
            )
        except (RPCError, RuntimeError) as err:
            activity.logger.warning("could not move the workflow off the previous worker's sticky queue: %s", err)

    async def _pulse(self, input: SessionInput, beats: _Beats, cadence: float) -> SessionResult | None:
        """Heartbeat Temporal every ``cadence`` seconds and, when due, the platform right after.

        The first Temporal heartbeat waits for the first platform beat (at most ``cadence`` away), so every
        Temporal heartbeat follows a platform beat and the SDK's heartbeat throttle (80 % of the timeout) never
        delays one: the gap between two accepted platform beats across a worker's death stays within the heartbeat
        timeout plus a retry. A platform beat never holds up the next Temporal heartbeat: it runs as its own task.

        Returns (ending the session) when the worker shuts down, when platform beats have failed for
        ``trouble_after_s`` (``trouble``), or when one works again after ``in_trouble``; raises what ``_beat``
        raises (``Auth``, ``Gone``, ``TokenMissing``).
        """
        now = time.monotonic()
        overdue = 0.0 if beats.last_beat_at is None else (_now() - beats.last_beat_at).total_seconds()
        next_beat = now + max(0.0, input.heartbeat_interval_s - overdue) if beats.last_beat_at else now
        next_pulse = min(next_beat, now + cadence)
        while True:
            now = time.monotonic()
            if now >= next_pulse - 0.05:
                activity.heartbeat()
                next_pulse = now + cadence
            if beats.in_flight is None and now >= next_beat - 0.05:
                beat = asyncio.create_task(self._beat(input.target, input.report))
                beats.send(beat)
                # A slow beat is not waited for past min(cadence, 10 s): it settles on its own (``_Beats.settle``).
                await asyncio.wait({beat}, timeout=min(cadence, 10.0))
                if beat.done():
                    beats.settle(beat)
                # A failed beat is tried again after 5 s, never later than the next regular beat.
                retry = beats.failing_since is not None
                next_beat = time.monotonic() + (
                    min(5.0, input.heartbeat_interval_s) if retry else input.heartbeat_interval_s
                )
            if beats.fatal is not None:
                raise beats.fatal
            if beats.failing_since is not None and _now() - beats.failing_since >= timedelta(
                seconds=input.trouble_after_s
            ):
                return SessionResult(trouble=self._trouble("heartbeat", beats))
            if input.in_trouble and input.poll is None and beats.beats:
                return SessionResult(recovered=True)
            if await _pause(max(0.05, min(next_pulse, next_beat) - time.monotonic())):
                return None

    @staticmethod
    def _trouble(operation: str, beats: _Beats) -> PlatformTrouble:
        return PlatformTrouble(
            operation=operation,
            error=beats.last_error,
            since=beats.failing_since or _now(),
            attempts=beats.failing_attempts,
        )

    async def _read_inbox(self, input: SessionInput, beats: _Beats) -> PollResult | SessionResult:
        """The inbox half of :meth:`session`: read until there is news, retrying failed reads itself.

        Each read waits for its turn from the platform's read planner (``activities.planner``): every
        ``poll_interval_s`` while the request budget has room, less often and fairly only when it is short.
        """
        assert input.poll is not None
        poll = input.poll
        workspace_id = poll.target.workspace_id
        planner = self._budgets.planner_for(poll.target.platform_url)
        reads = 0
        trouble = _Beats(None)  # failure bookkeeping of the reads
        wait_turn = True  # a read retried after a failure has waited its backoff instead
        try:
            while True:
                if wait_turn and await self._read_turn(poll.target, poll.poll_interval_s, None):
                    return SessionResult()  # the worker is shutting down
                wait_turn = True
                reads += 1
                try:
                    result = await self._poll_once(poll)
                except ApplicationError as err:
                    # Auth, gone and a missing token end the session (its beats would meet them too); any other
                    # failure of a read is retried here like a transient one, so heartbeats never stop for it.
                    if err.type in (ErrorType.AUTH, ErrorType.GONE, ErrorType.TOKEN_MISSING):
                        raise
                    trouble.failed(err.message)
                    if _now() - (trouble.failing_since or _now()) >= timedelta(seconds=input.trouble_after_s):
                        if not input.in_trouble:
                            return SessionResult(trouble=self._trouble("poll", trouble))
                    pause = TRANSIENT_BACKOFF_S[min(trouble.failing_attempts, len(TRANSIENT_BACKOFF_S)) - 1]
                    if err.next_retry_delay is not None:
                        pause = max(pause, err.next_retry_delay.total_seconds())
                    activity.logger.warning(
                        "inbox read failed (attempt %d, retrying in %.0f s): %s",
                        trouble.failing_attempts,
                        pause,
                        err.message,
                        extra={"workspace_id": workspace_id},
                    )
                    if await _pause(pause):
                        return SessionResult()
                    wait_turn = False
                    continue
                if input.in_trouble:
                    news = result.model_copy(update={"polls": reads}) if result is not None else None
                    return SessionResult(poll=news, recovered=True)
                if result is not None:
                    if result.rows:
                        planner.note_rows(workspace_id)
                    return self._bounded(result).model_copy(update={"polls": reads})
        finally:
            planner.done(workspace_id)

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

    @staticmethod
    def _rows(response: httpx.Response, operation: str = "poll") -> list[InboxRow]:
        """Decode an inbox answer row by row (``activities.inbox.decode_inbox``)."""
        if response.status_code >= 300:
            raise classify_response(operation, response)
        try:
            return decode_inbox(response.content)
        except InboxFormatError as err:
            raise ApplicationError(f"{operation}: {err}", type=ErrorType.TRANSIENT) from None

    async def _read_newest(self, target: PlatformTarget, limit: int) -> list[InboxRow]:
        """The newest ``limit`` rows, oldest first (the platform answers DESC without a cursor, §3.3)."""
        rows = self._rows(await self._get_inbox(target, {"limit": limit}))
        rows.reverse()
        return rows

    async def _poll_once(self, input: PollInput) -> PollResult | None:
        """One inbox read. ``None`` when there is nothing to report and the long poll should go on."""
        target = input.target
        cursor = input.cursor
        if cursor is not None and not is_uuid(cursor.row_id):
            # A non-UUID cursor gets a 500 on every poll (docs/protocol.md §3.3): treat it as lost, like a 410.
            activity.logger.warning("cursor is not a UUID; resetting", extra={"workspace_id": target.workspace_id})
            rows = await self._read_newest(target, RESET_READ_LIMIT)
            return PollResult(
                rows=self._new(rows_to_polled(rows, read_after=None, not_before=cursor.created_at), input),
                cursor_reset=True,
            )
        if cursor is not None:
            response = await self._get_inbox(target, {"since_id": cursor.row_id, "limit": input.limit})
            if response.status_code == 410:
                activity.logger.warning(
                    "cursor not found (410); re-reading newest rows",
                    extra={"workspace_id": target.workspace_id, "row_id": cursor.row_id},
                )
                rows = await self._read_newest(target, RESET_READ_LIMIT)
                floor = max((t for t in (cursor.created_at, input.not_before) if t is not None), default=None)
                polled = rows_to_polled(rows, read_after=None, not_before=floor)
                return PollResult(rows=self._new(polled, input), cursor_reset=True)
            page = self._rows(response)
            if len(page) >= input.limit and not any(is_uuid(str(row.fields["id"])) for row in page):
                return await self._past_unusable(input, page)
            polled = self._new(rows_to_polled(page, read_after=cursor.row_id), input)
            return PollResult(rows=polled) if polled else None
        if not input.seeded:
            if input.start_from == "latest":
                newest = [r for r in await self._read_newest(target, 20) if is_uuid(str(r.fields["id"]))]
                seed = None
                if newest:
                    fields = newest[-1].fields
                    seed = RowPointer(row_id=str(fields["id"]), created_at=parse_time(fields.get("created_at")))
                return PollResult(seed=seed, cold_start_done=True)
            rows = await self._read_newest(target, min(max(input.backlog_limit, 1), RESET_READ_LIMIT))
            return PollResult(rows=self._new(rows_to_polled(rows, read_after=None), input), cold_start_done=True)
        # Seeded without a cursor: the inbox was empty (or reset) then, so every row since is new.
        rows = await self._read_newest(target, RESET_READ_LIMIT)
        polled = self._new(rows_to_polled(rows, read_after=None, not_before=input.not_before), input)
        return PollResult(rows=polled) if polled else None

    async def _past_unusable(self, input: PollInput, page: list[InboxRow]) -> PollResult | None:
        """Read past a full page of rows that cannot be cursors (non-UUID ids), which ``since_id`` can never pass.

        Every read after the cursor would return the same page; the newest rows (without a cursor) are read instead,
        keeping those from the page's time on, so the cursor can land on a UUID row after them (the dedupe window
        drops what was seen). More than ``RESET_READ_LIMIT`` such rows in a row cannot be passed: logged.
        """
        times = [t for t in (parse_time(row.fields.get("created_at")) for row in page) if t is not None]
        rows = await self._read_newest(input.target, RESET_READ_LIMIT)
        polled = self._new(rows_to_polled(rows, read_after=None, not_before=min(times, default=None)), input)
        if not any(row.pointer.usable for row in polled):
            activity.logger.warning(
                "the inbox holds over %d rows in a row whose ids are not UUIDs: cannot read past them",
                len(page),
                extra={"workspace_id": input.target.workspace_id},
            )
        return PollResult(rows=polled) if polled else None

    @staticmethod
    def _new(rows: list[PolledRow], input: PollInput) -> list[PolledRow]:
        """Leave out rows the workflow settled but cannot use as a cursor (``PollInput.ignore_row_ids``)."""
        if not input.ignore_row_ids:
            return rows
        ignored = set(input.ignore_row_ids)
        return [row for row in rows if row.row_id not in ignored]

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

    @activity.defn(name=ActivityName.POLL)
    async def poll(self, input: PollInput) -> PollResult:
        """Long-poll the inbox until rows arrive or ``max_wait_s`` passes (docs/protocol.md §3.3–4).

        Replaced by ``session``; kept for connectors started before it (their histories call it). Each read waits
        for its turn from the platform's read planner (``activities.planner``), as the session's do.

        Returns:
            Rows oldest first (skip rules applied), possibly empty after ``max_wait_s``.

        Raises:
            ApplicationError: ``Transient`` (retried with backoff, ``Retry-After`` honoured), ``Auth``, ``Gone``,
                ``TokenMissing``.
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
                if not _IN_SESSION.get():  # a session's pulse heartbeats Temporal
                    activity.heartbeat()
        finally:
            turn.cancel()  # no-op once granted; otherwise leaves the planner's queue
            shutdown.cancel()

    @activity.defn(name=ActivityName.CHECK_CURSOR)
    async def check_cursor(self, input: CheckCursorInput) -> None:
        """Check that a row is in the workspace's inbox before the cursor moves to it (``set_cursor`` update).

        Reads ``since_id=<row>&limit=1`` (docs/protocol.md §3.3): the platform answers ``410`` for a row it does not
        know in this inbox (unknown, pruned, or another workspace's).

        Raises:
            ApplicationError: ``Permanent`` with advice when the platform does not know the row; ``Transient``,
                ``Auth``, ``Gone`` or ``TokenMissing`` as any platform call.
        """
        response = await self._get_inbox(input.target, {"since_id": input.row_id, "limit": 1}, operation="check")
        if response.status_code == 410:
            raise ApplicationError(
                f"row {input.row_id} is not in this workspace's inbox (unknown, pruned or another workspace's): "
                "give a row id from `molecule-connect status` or the platform, or `--latest`",
                type=ErrorType.PERMANENT,
                non_retryable=True,
            )
        self._rows(response, "check cursor")

    # --- re-read a body passed by reference --------------------------------------------------------------------

    async def read_body(self, target: PlatformTarget, row: PolledRow) -> Any:
        """Re-read the ``request_body`` of a row the poll passed by reference (``PolledRow.body_ref``).

        Called by ``dispatch``, within the platform's request budget. The platform has no single-row read
        (docs/protocol.md §3.3), so the row is read as the one after its predecessor,
        ``GET /workspaces/{id}/activity?type=a2a_receive&since_id=<read_after>&limit=1``, and its ``id`` checked.
        When there is no known predecessor, the predecessor was pruned (410) or another row (or none) comes back,
        the row is looked for among the newest ``RESET_READ_LIMIT`` rows: a row without a known predecessor
        can only be re-read while it is among the newest 500 of the inbox.

        Args:
            target: Our workspace.
            row: A row whose ``body_ref`` is set.

        Returns:
            The row's ``request_body`` as stored by the platform (decoded JSON; parse it with ``parse_inbound``).

        Raises:
            RowNotFoundError: The row is no longer on the platform (pruned, or no longer among the newest rows).
            ApplicationError: ``Transient`` (network, 5xx, 429: retryable, ``Retry-After`` honoured), ``Auth``
                (401/403), ``TokenMissing`` or ``Gone`` (404 on our workspace), classified like every platform call.
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
                if rows and str(rows[0].fields["id"]) == row.row_id:
                    return self._readable_body(rows[0])
            activity.logger.warning(
                "message body not after its predecessor; searching the newest rows", extra=log_extra
            )
        response = await self._get_inbox(
            target, {"limit": RESET_READ_LIMIT}, operation=operation, priority=Priority.WORK
        )
        found = next((r for r in self._rows(response, operation) if str(r.fields["id"]) == row.row_id), None)
        if found is not None:
            return self._readable_body(found)
        if ref.read_after is not None:
            raise RowNotFoundError("message body no longer on the platform (pruned); cannot re-read")
        raise RowNotFoundError(
            f"message body not among the newest {RESET_READ_LIMIT} inbox rows (pruned or too old); cannot re-read"
        )

    @staticmethod
    def _readable_body(row: InboxRow) -> Any:
        if row.problem is not None:
            raise RowNotFoundError(f"message body cannot be decoded: {row.problem}")
        return row.fields.get("request_body")

    # --- reply ------------------------------------------------------------------------------------------------

    @activity.defn(name=ActivityName.REPLY)
    async def reply(self, input: ReplyInput) -> ReplyResult:
        """Send the reply for one inbound row (docs/protocol.md §1.5); see :meth:`send_reply`."""
        return await self.send_reply(input)

    async def send_reply(self, input: ReplyInput) -> ReplyResult:
        """Send the reply for one inbound row (docs/protocol.md §1.5), inside any activity (``reply``, ``dispatch``).

        From a peer (``source_id`` set): a new ``message/send`` to ``POST /workspaces/{source_id}/a2a`` in the v0.3
        reply shape of docs/protocol.md §5, with a deterministic ``messageId`` (UUIDv5 of workspace + row), so a
        retried reply is stored once. From the canvas: ``POST /workspaces/{self}/notify`` with the text. A notify
        has no ``messageId`` for the platform to deduplicate, so before sending one that an earlier attempt may
        have delivered (``input.attempted_at``, a retry, a local activity) the inbox is searched for its echo row
        (§3.5: same text, created since the first attempt): found means sent.

        Raises:
            ApplicationError: ``Transient`` (retried), ``Auth`` (our token), ``TokenMissing``, ``Permanent`` (the
                peer refused it; 404 on a peer is permanent, not ``Gone``).
        """
        target, row = input.target, input.row
        if row.source_id is None:
            return await self._notify(input)
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

    async def _notify(self, input: ReplyInput) -> ReplyResult:
        target = input.target
        text = "\n".join(p.text for p in input.parts if isinstance(p, TextPart)) or "(no text)"
        attachments = [
            {
                "uri": p.file.uri,
                "name": p.file.name or p.file.uri,
                **({"mimeType": p.file.mime_type} if p.file.mime_type else {}),
            }
            for p in input.parts
            if p.kind == "file" and p.file.uri
        ]
        info = activity.info() if activity.in_activity() else None
        first_try = input.attempted_at
        if info is not None and (info.attempt > 1 or info.is_local):
            # A local activity re-run after its worker died is scheduled anew, possibly long after the first run:
            # only the row's arrival bounds when that run could have sent the reply.
            arrived = input.row.created_at if info.is_local else None
            first_try = min(t for t in (first_try, info.scheduled_time, arrived) if t is not None)
        if first_try is not None and await self._notify_echo_exists(
            target, text, since=first_try, answering=input.row.created_at
        ):
            activity.logger.info(
                "canvas reply already on the platform (its echo row found); not sent again",
                extra={"workspace_id": target.workspace_id, "row_id": input.row.row_id},
            )
            return ReplyResult(destination="canvas", deduplicated=True)
        body: dict[str, Any] = {"message": text}
        if attachments:
            body["attachments"] = attachments
        response = await self._request(
            "reply to canvas", "POST", target, f"/workspaces/{target.workspace_id}/notify", json_body=body
        )
        if response.status_code >= 300:
            raise classify_response("reply to canvas", response)
        return ReplyResult(destination="canvas")

    async def _notify_echo_exists(
        self, target: PlatformTarget, text: str, *, since: datetime, answering: datetime | None = None
    ) -> bool:
        """Whether the inbox holds a notify echo row with ``text`` created since ``since`` (docs/protocol.md §3.5).

        Reads the newest rows created in the window (``since_secs``, newest first) and compares the echo's
        ``response_body.result``. Only echoes created at or after ``answering`` (the inbound row's ``created_at``,
        same platform clock) count: a reply cannot precede its message, so the answer to an earlier message with
        the same text (a person asking the same thing twice) is never taken for this one. Two canvas replies with
        the same text could still match when the second message arrived before the first was answered.
        """
        window = max(1, int((_now() - since).total_seconds() + 2 * NOTIFY_SKEW_S))
        response = await self._get_inbox(
            target, {"since_secs": window, "limit": NOTIFY_ECHO_LIMIT}, operation="look for notify echo"
        )
        floor = since - timedelta(seconds=NOTIFY_SKEW_S)
        if answering is not None:
            floor = max(floor, answering)
        for row in self._rows(response, "look for notify echo"):
            fields = row.fields
            answer = fields.get("response_body")
            created = parse_time(fields.get("created_at"))
            if (
                fields.get("method") == "notify"
                and isinstance(answer, dict)
                and answer.get("result") == text
                and (created is None or created >= floor)
            ):
                return True
        return False
