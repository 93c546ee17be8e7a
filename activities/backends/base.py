"""The backend contract: one inbound message in, reply parts out (docs/architecture.md §3).

A backend never sees Temporal: ``activities.dispatch`` heartbeats while ``handle`` runs, and cancels the
``handle`` task on activity cancellation or worker shutdown (a backend must then stop its work, e.g. kill its
process group, and re-raise ``asyncio.CancelledError``).
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict

from activities.a2a import A2AMessage, DataPart, FilePart, TextPart


class BackendRequest(BaseModel):
    """What a backend receives for one inbound message."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    workspace_id: str
    """Our workspace id."""
    row_id: str
    """The inbound activity row id."""
    source_id: str | None
    """The sender workspace id, ``None`` for the canvas."""
    lane: str
    """The conversation key (``contextId``, else the sender, else ``canvas``)."""
    message: A2AMessage
    """The normalized inbound message."""
    text: str
    """The message's text parts joined in order."""
    attempt: int = 1
    """Which delivery attempt this is (1-based)."""


class BackendResponse(BaseModel):
    """What a backend returns: the reply parts (usually one text part)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    parts: list[TextPart | FilePart | DataPart]


class BackendError(Exception):
    """The message failed in the backend (non-zero exit, timeout, bad output). Retried, then dead-lettered."""


class PermanentBackendError(BackendError):
    """This message can never succeed (the agent rejected it as invalid): dead-lettered at once, not retried."""


class BackendConfigError(Exception):
    """The backend cannot run at all (unknown name, bad option, command not found). Blocks the workspace."""


class Backend(Protocol):
    """A message handler. Instances are cached per (name, options) and shared by concurrent dispatches."""

    async def handle(self, request: BackendRequest) -> BackendResponse:
        """Answer one message.

        Raises:
            BackendError: This message failed; the dispatch is retried.
            BackendConfigError: The backend is misconfigured; no message can succeed.
        """
        ...

    async def close(self) -> None:
        """Release resources (called at worker shutdown)."""
        ...
