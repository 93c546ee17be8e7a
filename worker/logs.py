"""Process logging of worker commands: text for people, or JSON lines for log pipelines (``--log-format json``).

A JSON line holds ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and every ``extra=`` field of the
call: ours (``workspace_id``, ``row_id``, ``message_id``, ``attempt``, ...) and the SDK's ``temporal_workflow`` /
``temporal_activity`` context (workflow id, run id, activity type, attempt). In JSON mode that context is kept out
of the message text, where the SDK appends it by default.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter
from temporalio import activity, workflow

LogFormat = Literal["text", "json"]

LOG_FORMAT_ENV = "MOLECULE_LOG_FORMAT"
"""Environment variable for ``--log-format``."""

LOG_LEVEL_ENV = "MOLECULE_LOG_LEVEL"
"""Environment variable for ``--log-level``."""

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

CONTEXT_FIELDS = ("workspace_id", "row_id", "message_id", "attempt")
"""``extra`` fields the text format appends as ``key=value`` (JSON has every field)."""

QUIET_BELOW_DEBUG = ("httpx", "httpcore")
"""Libraries that log every request at INFO: one line per poll would drown the connector's own lines."""

ANNOUNCE_LOGGER = "molecule_connect"
"""Logger of :func:`announce` records."""

_HANDLER_NAME = "molecule-connect"


class _State:
    json = False


_state = _State()


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` with the :data:`CONTEXT_FIELDS` a record carries."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Format the record, then append its context fields."""
        line = super().format(record)
        context = " ".join(f"{key}={getattr(record, key)}" for key in CONTEXT_FIELDS if hasattr(record, key))
        return f"{line} {context}" if context else line


class JsonLinesFormatter(JsonFormatter):
    """python-json-logger's formatter with ``time`` first (UTC, milliseconds), then level, logger and message."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        """Put ``time`` first, then the configured and ``extra`` fields."""
        log_data["time"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        super().add_fields(log_data, record, message_dict)


def configure_logging(log_format: str = "text", level: str = "INFO", *, stream: TextIO | None = None) -> None:
    """Send every logger's records to ``stream`` (stderr) in ``log_format``, replacing an earlier call's handler.

    Args:
        log_format: ``text`` or ``json``.
        level: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR`` (any case). Below DEBUG, :data:`QUIET_BELOW_DEBUG`
            libraries log warnings only.
        stream: Where lines go; stderr when None.

    Raises:
        ValueError: An unknown format or level (the message lists the valid ones).
    """
    if log_format not in ("text", "json"):
        raise ValueError(f"unknown log format {log_format!r}: use text or json")
    name = level.upper()
    if name not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}: use one of {', '.join(LOG_LEVELS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonLinesFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(name)
    for library in QUIET_BELOW_DEBUG:
        logging.getLogger(library).setLevel(logging.DEBUG if name == "DEBUG" else logging.WARNING)
    # The context is in the JSON fields already; in text it stays in the message, the SDK's default.
    in_message = log_format == "text"
    _state.json = not in_message
    workflow.logger.workflow_info_on_message = in_message
    activity.logger.activity_info_on_message = in_message


def announce(message: str) -> None:
    """Tell the operator about the process (started, stopping): a line on stderr, or an INFO record in JSON mode.

    JSON mode keeps stderr parseable line by line; text mode keeps the plain lines people and scripts wait for.
    """
    if _state.json:
        logging.getLogger(ANNOUNCE_LOGGER).info(message)
    else:
        print(message, file=sys.stderr)  # noqa: T201 - CLI output
