"""The ``echo`` backend: replies with the message text through a template, to try a setup without an agent."""

from __future__ import annotations

import logging
import string
from collections.abc import Mapping
from typing import ClassVar

from pydantic import field_validator

from activities.a2a import TextPart
from activities.backends.base import BackendRequest, BackendResponse
from activities.backends.options import BackendOptions, parse_options

logger = logging.getLogger(__name__)

PLACEHOLDERS = ("text", "source", "context_id", "row_id")
"""The names a template may use, each filled by :func:`_placeholder_values`."""


class EchoOptions(BackendOptions):
    """Options of the ``echo`` backend (``-o template=...``)."""

    template: str = "echo: {text}"
    """Reply text: a Python format string with {text}, {source} (sender id, or canvas), {context_id} and
    {row_id}; write {{ and }} for literal braces."""

    @field_validator("template")
    @classmethod
    def _only_known_placeholders(cls, template: str) -> str:
        """Reject templates that could fail on a message, so a mistake is found when the worker starts."""
        try:
            fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(template) if name is not None]
        except ValueError as err:
            raise ValueError(f"malformed template: {err}") from None
        known = ", ".join(f"{{{name}}}" for name in PLACEHOLDERS)
        for name, spec in fields:
            if name not in PLACEHOLDERS:
                raise ValueError(f"unknown placeholder {{{name}}} (known: {known})")
            if spec and "{" in spec:
                raise ValueError(f"nested placeholders are not supported: {{{name}:{spec}}}")
        try:
            # Values are always strings, so a format spec that works on empty strings works on every message.
            template.format(**dict.fromkeys(PLACEHOLDERS, ""))
        except ValueError as err:
            raise ValueError(f"malformed template: {err}") from None
        return template


def _placeholder_values(request: BackendRequest) -> dict[str, str]:
    """The template's values for one message; absent ids are empty, a canvas sender is ``canvas``."""
    return {
        "text": request.text,
        "source": request.source_id or "canvas",
        "context_id": request.message.context_id or "",
        "row_id": request.row_id,
    }


class EchoBackend:
    """Reply with one text part: the template filled with the message.

    The message text is a value, never part of the template, so braces in it are sent as typed.
    """

    summary: ClassVar[str] = "Reply with the message text through a template (for trying a setup out)."
    options_model: ClassVar[type[BackendOptions]] = EchoOptions

    def __init__(self, options: Mapping[str, str]) -> None:
        """Validate the options.

        Args:
            options: ``template`` (optional); see :class:`EchoOptions`.

        Raises:
            BackendConfigError: An unknown option, or a template with an unknown placeholder or bad syntax.
        """
        self.options = parse_options(EchoOptions, options, backend="echo")

    async def handle(self, request: BackendRequest) -> BackendResponse:
        """Fill the template with the message.

        Args:
            request: The inbound message.

        Returns:
            One :class:`~activities.a2a.TextPart` holding the filled template.
        """
        text = self.options.template.format(**_placeholder_values(request))
        logger.debug(
            "echo: replying with %d characters",
            len(text),
            extra={
                "workspace_id": request.workspace_id,
                "row_id": request.row_id,
                "attempt": request.attempt,
            },
        )
        return BackendResponse(parts=[TextPart(text=text)])

    async def close(self) -> None:
        """Nothing to release."""
