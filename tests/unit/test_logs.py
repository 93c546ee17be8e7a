"""Process logging: JSON lines carry time, level, logger, message and the ``extra`` context; text stays readable."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError

from worker import logs
from worker.logs import announce, configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put the root logger and the SDK adapters back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)
    workflow.logger.workflow_info_on_message = True
    activity.logger.activity_info_on_message = True
    logs._state.json = False


def test_json_format_line_has_time_level_logger_message_and_extra_fields() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    logging.getLogger("activities.dispatch").warning(
        "dispatch failed: %s", "exit 3", extra={"workspace_id": "ws-1", "row_id": "r-1", "attempt": 2}
    )
    record = json.loads(out.getvalue())
    assert list(record)[:4] == ["time", "level", "logger", "message"]
    assert record["time"].endswith("+00:00")
    assert (record["level"], record["logger"], record["message"]) == (
        "WARNING",
        "activities.dispatch",
        "dispatch failed: exit 3",
    )
    assert (record["workspace_id"], record["row_id"], record["attempt"]) == ("ws-1", "r-1", 2)


def test_json_format_exception_and_announce_stay_one_json_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    configure_logging("json", "DEBUG", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    announce("worker running on task queue tq")
    lines = out.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2
    assert "RuntimeError: boom" in records[0]["exc_info"]
    assert records[1]["message"] == "worker running on task queue tq"
    assert capsys.readouterr().err == ""
    # The SDK's workflow/activity context goes to fields, not into the message text.
    assert workflow.logger.workflow_info_on_message is False
    assert activity.logger.activity_info_on_message is False


def _failed_attempt() -> None:
    """What the SDK logs for a failed activity attempt: a warning with the exception and the activity's context."""
    try:
        raise ApplicationError("exec: 'sh' exited with status 3: boom", type="BackendFailed")
    except ApplicationError:
        logging.getLogger("temporalio.activity").warning(
            "Completing activity as failed",
            exc_info=True,
            extra={"temporal_activity": {"activity_type": "dispatch", "attempt": 2, "workflow_id": "connect-ws-1"}},
        )


@pytest.mark.parametrize("level", ["INFO", "WARNING"])
def test_text_above_debug_a_failed_attempt_is_one_line_with_error_class(level: str) -> None:
    out = io.StringIO()
    configure_logging("text", level, stream=out)
    _failed_attempt()
    [line] = out.getvalue().splitlines()
    assert line.endswith(
        "WARNING temporalio.activity: Completing activity as failed: BackendFailed: exec: 'sh' exited with status 3: "
        "boom activity=dispatch workflow_id=connect-ws-1 attempt=2"
    ), line


def test_json_above_debug_a_failed_attempt_has_error_fields_and_no_traceback() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)
    _failed_attempt()
    [record] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (record["error_type"], record["error"]) == ("BackendFailed", "exec: 'sh' exited with status 3: boom")
    assert "exc_info" not in record
    assert record["temporal_activity"]["activity_type"] == "dispatch"


def test_text_at_debug_keeps_the_traceback() -> None:
    out = io.StringIO()
    configure_logging("text", "DEBUG", stream=out)
    _failed_attempt()
    text = out.getvalue()
    assert "Traceback (most recent call last)" in text
    assert "temporalio.exceptions.ApplicationError: " in text


def test_text_format_appends_context_and_announce_prints_plain(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    configure_logging("text", "DEBUG", stream=out)
    logging.getLogger("workflows.connect").info("registered", extra={"workspace_id": "ws-1", "attempt": 1})
    assert out.getvalue().rstrip().endswith("INFO workflows.connect: registered workspace_id=ws-1 attempt=1")
    announce("worker stopped")
    assert capsys.readouterr().err == "worker stopped\n"


def test_configure_logging_level_filters_and_quiets_http_client_below_debug() -> None:
    out = io.StringIO()
    configure_logging("json", "warning", stream=out)
    configure_logging("json", "info", stream=out)  # replaces the handler rather than adding a second
    logging.getLogger("x").debug("hidden")
    logging.getLogger("httpx").info("HTTP Request: GET /inbox 200")
    logging.getLogger("x").info("shown")
    assert [json.loads(line)["message"] for line in out.getvalue().splitlines()] == ["shown"]


@pytest.mark.parametrize(
    ("fmt", "level", "problem"), [("xml", "INFO", "unknown log format"), ("json", "LOUD", "level")]
)
def test_configure_logging_unknown_value_raises_with_valid_choices(fmt: str, level: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        configure_logging(fmt, level)
