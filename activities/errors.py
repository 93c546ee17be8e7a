"""Failure classes of docs/protocol.md §2 as Temporal ``ApplicationError`` types, and the one status classifier.

Transient failures are retryable (with ``next_retry_delay`` from ``Retry-After``); auth, gone and permanent ones are
non-retryable and carry a constant ``type`` that ``ConnectWorkflow`` matches on. Error text holds the operation, the
status and at most 200 characters of the body; never a token.
"""

from __future__ import annotations

import random
import re
from datetime import timedelta
from enum import StrEnum

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory


class ErrorType(StrEnum):
    """``ApplicationError.type`` values. They live in history: renaming one is a versioning change."""

    TRANSIENT = "Transient"
    """Network error, timeout, 5xx, 408, 425, 429: retried with backoff."""
    AUTH = "Auth"
    """401/403, or no token configured: the duty stops and is retried slowly."""
    GONE = "Gone"
    """Our own workspace answered 404/410: removed, or tenant headers missing."""
    PERMANENT = "Permanent"
    """Any other 4xx: this request will never succeed."""
    BACKEND_FAILED = "BackendFailed"
    """The backend failed on this message: retried, then dead-lettered."""
    BACKEND_MISCONFIGURED = "BackendMisconfigured"
    """The backend cannot run at all (unknown backend, command not found, bad option): the workspace is blocked."""
    TOKEN_MISSING = "TokenMissing"
    """This worker holds no token for the workspace. Retryable, soon: another worker on the task queue may hold it.
    Non-retryable once no worker has taken the activity for :data:`TOKEN_HANDOFF`: the connector shows ``blocked``."""
    WORKER_LOST = "WorkerLost"
    """A session's worker stopped heartbeating its lease (``activities.lease``): retried at once on a live worker."""


TOKEN_HANDOFF = timedelta(minutes=3)
"""How long an activity may go from worker to worker looking for one that holds the workspace's token."""
TOKEN_RETRY_DELAY = timedelta(seconds=2)
"""Retry delay of a ``TokenMissing`` failure: the next attempt may land on a worker that holds the token."""

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
NOT_RETRYABLE = (ErrorType.AUTH, ErrorType.GONE, ErrorType.PERMANENT, ErrorType.BACKEND_MISCONFIGURED)


def retry_after(response: httpx.Response) -> timedelta | None:
    """Seconds from the ``Retry-After`` header (delta-seconds form, capped at 1 h); ``None`` when absent or bad."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return timedelta(seconds=min(max(seconds, 0.0), 3600.0))


BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0
JITTER = 0.25
"""Transient retries without ``Retry-After`` wait ``min(60, 2**(attempt-1))`` s ± 25 %: the schedule of the
workflow's ``PLATFORM_RETRY`` policy, plus the jitter Temporal's retry policy does not add, so a fleet that failed
together does not retry in lockstep (docs/protocol.md §2)."""


def jittered_backoff() -> timedelta | None:
    """The next retry delay for a transient failure inside an activity; ``None`` outside one (server default)."""
    if not activity.in_activity():
        return None
    attempt = max(activity.info().attempt, 1)
    base = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** (attempt - 1))
    return timedelta(seconds=base * random.uniform(1 - JITTER, 1 + JITTER))


REDACTED = "<redacted>"
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s\"',;}\]]+")


def redact(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """``text`` with every one of ``secrets`` and anything shaped like ``Bearer <credential>`` replaced.

    Applied to every error text built from what a platform or agent answered, before it is raised, logged or
    returned: a platform that echoes the ``Authorization`` header in a ``401`` body must not get the token into
    history, ``status`` or logs (docs/guarantees.md, secrets).
    """
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


def request_secrets(response: httpx.Response) -> tuple[str, ...]:
    """The credential a request carried (its bearer token), to redact from anything its answer says."""
    try:
        header = response.request.headers.get("authorization", "")
    except RuntimeError:  # a response built without a request (tests)
        return ()
    scheme, _, credential = header.partition(" ")
    return (credential.strip(),) if scheme.lower() == "bearer" and credential.strip() else ()


def body_excerpt(response: httpx.Response, limit: int = 200) -> str:
    """At most ``limit`` characters of a response body, on one line, with the request's token redacted."""
    try:
        text = response.text
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return "<unreadable body>"
    text = redact(" ".join(text.split()), request_secrets(response))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def classify_response(operation: str, response: httpx.Response, *, own_workspace: bool = True) -> ApplicationError:
    """Map a non-2xx response to the docs/protocol.md §2 class, as an ``ApplicationError`` to raise.

    Args:
        operation: What was attempted, e.g. ``"poll"`` or ``"reply to <id>"``.
        response: The platform's answer (status ≥ 300).
        own_workspace: 404/410 on our own workspace means ``Gone``; on another (a peer) it is ``Permanent``.

    Returns:
        An error of type ``Transient`` (retryable, ``next_retry_delay`` from ``Retry-After``), ``Auth``, ``Gone`` or
        ``Permanent`` (non-retryable).
    """
    status = response.status_code
    detail = f"{operation}: HTTP {status} {body_excerpt(response)}".rstrip()
    if status in TRANSIENT_STATUSES or status >= 500:
        return ApplicationError(
            detail,
            type=ErrorType.TRANSIENT,
            next_retry_delay=delay if (delay := retry_after(response)) is not None else jittered_backoff(),
            category=ApplicationErrorCategory.BENIGN if status in (425, 429) else ApplicationErrorCategory.UNSPECIFIED,
        )
    if status in (401, 403):
        return ApplicationError(detail, type=ErrorType.AUTH, non_retryable=True)
    if own_workspace and status in (404, 410):
        return ApplicationError(detail, type=ErrorType.GONE, non_retryable=True)
    return ApplicationError(detail, type=ErrorType.PERMANENT, non_retryable=True)


def transport_error(operation: str, err: httpx.HTTPError) -> ApplicationError:
    """A network failure or timeout as a retryable ``Transient`` error (docs/protocol.md §2)."""
    return ApplicationError(
        redact(f"{operation}: {type(err).__name__}: {err}")[:300],
        type=ErrorType.TRANSIENT,
        next_retry_delay=jittered_backoff(),
    )
