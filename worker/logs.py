"""Process logging of worker commands: text for people, or JSON lines for log pipelines (``--log-format json``).

A JSON line holds ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and every ``extra=`` field of the
call: ours (``workspace_id``, ``row_id``, ``message_id``, ``attempt``, ...) and the SDK's ``temporal_workflow`` /
``temporal_activity`` context (workflow id, run id, activity type, attempt). The SDK's context is kept out of the
message text, where the SDK appends it by default as a long dict: a text line ends with ``key=value`` pairs instead
(:data:`CONTEXT_FIELDS`, plus the activity type and the workflow id when no workspace id says more).

Tracebacks only at ``DEBUG``. Above it, a record that carries an exception (the SDK's "Completing activity as failed"
for every failed attempt, a failed workflow activation) is one line: its message, then the error's class and message,
e.g. ``Completing activity as failed: BackendFailed: exec: 'sh' exited with status 3: boom activity=dispatch ...``
(in JSON: ``error_type`` and ``error`` fields instead of ``exc_info``). The formatters do it, so the SDK's records
and every other handler stay as they are.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter
from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError, FailureError

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


def error_summary(error: BaseException) -> tuple[str, str]:
    """An exception's class and its message on one line, without the traceback.

    An ``ApplicationError``'s ``type`` (e.g. ``BackendFailed``) counts as its class.
    """
    kind = error.type if isinstance(error, ApplicationError) and error.type else type(error).__name__
    text = error.message if isinstance(error, FailureError) else str(error)
    return kind, " ".join(text.split()) or "(no message)"


def _without_traceback(record: logging.LogRecord) -> tuple[logging.LogRecord, tuple[str, str] | None]:
    """A copy of ``record`` without its exception, and the exception's summary (None when it had none)."""
    exc_info = record.exc_info
    if not exc_info or exc_info[1] is None:
        return record, None
    summary = error_summary(exc_info[1])
    copy = logging.makeLogRecord(record.__dict__)
    copy.exc_info, copy.exc_text, copy.stack_info = None, None, None
    return copy, summary


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` with the :data:`CONTEXT_FIELDS` a record carries.

    Args:
        tracebacks: Print an exception's traceback; without it (above ``DEBUG``) the line ends with the error's
            class and message instead.
    """

    def __init__(self, *, tracebacks: bool = True) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        """Format the record (one line unless ``tracebacks``), then append its context fields."""
        summary = None
        if not self.tracebacks:
            record, summary = _without_traceback(record)
        line = super().format(record)
        if summary is not None:
            line += f": {summary[0]}: {summary[1]}"
        context = " ".join(f"{key}={value}" for key, value in _context(record))
        return f"{line} {context}" if context else line


def _context(record: logging.LogRecord) -> list[tuple[str, object]]:
    """The ``key=value`` pairs a text line ends with: ours, then what the SDK's context adds to them."""
    pairs: list[tuple[str, object]] = [(key, getattr(record, key)) for key in CONTEXT_FIELDS if hasattr(record, key)]
    sdk = getattr(record, "temporal_activity", None) or getattr(record, "temporal_workflow", None)
    if isinstance(sdk, dict):
        keys = {key for key, _ in pairs}
        if "activity_type" in sdk:
            pairs.insert(0, ("activity", sdk["activity_type"]))
        if "workspace_id" not in keys and sdk.get("workflow_id"):
            pairs.append(("workflow_id", sdk["workflow_id"]))
        if "attempt" not in keys and "activity_type" in sdk and sdk.get("attempt"):
            pairs.append(("attempt", sdk["attempt"]))
    return pairs


class JsonLinesFormatter(JsonFormatter):
    """python-json-logger's formatter with ``time`` first (UTC, milliseconds), then level, logger and message.

    Args:
        tracebacks: Keep an exception's traceback in ``exc_info``; without it (above ``DEBUG``) the record gets
            ``error_type`` and ``error`` instead.
    """

    def __init__(self, *, tracebacks: bool = True) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object; an exception becomes ``error_type``/``error`` unless ``tracebacks``."""
        if self.tracebacks:
            return super().format(record)
        record, summary = _without_traceback(record)
        if summary is not None:
            record.error_type, record.error = summary
        return super().format(record)

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
    tracebacks = name == "DEBUG"
    formatter = JsonLinesFormatter if log_format == "json" else TextFormatter
    handler.setFormatter(formatter(tracebacks=tracebacks))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(name)
    for library in QUIET_BELOW_DEBUG:
        logging.getLogger(library).setLevel(logging.DEBUG if name == "DEBUG" else logging.WARNING)
    # The SDK's context goes to the record's fields: JSON keeps them, text appends a few as key=value.
    _state.json = log_format == "json"
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False


def announce(message: str) -> None:
    """Tell the operator about the process (started, stopping): a line on stderr, or an INFO record in JSON mode.

    JSON mode keeps stderr parseable line by line; text mode keeps the plain lines people and scripts wait for.
    """
    if _state.json:
        logging.getLogger(ANNOUNCE_LOGGER).info(message)
    else:
        print(message, file=sys.stderr)  # noqa: T201 - CLI output
