"""Replay debugging: export a connector's history and replay histories against the current ``ConnectWorkflow``.

A replay runs the workflow code over a recorded history without any I/O (activities are not executed, their
recorded results are used). It fails with a nondeterminism error when the code would now issue different commands
than the recorded ones, which is exactly the check to run before deploying a workflow change (Temporal docs,
"Replay testing"). Histories are the JSON that ``temporal workflow show --output json`` writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.worker import Replayer

from workflows.connect import ConnectWorkflow


@dataclass(frozen=True)
class ReplayOutcome:
    """The replay of one history.

    Attributes:
        source: Where the history came from (file path or ``workflow id/run id``).
        ok: ``True`` when the current code replays it without error.
        error: The first failure (nondeterminism or a workflow task error), one line; ``None`` when ok.
        event_id: The history event id the failure names, when it names one.
    """

    source: str
    ok: bool
    error: str | None = None
    event_id: int | None = None


def load_history(path: Path) -> WorkflowHistory:
    """Read a history JSON file (``temporal workflow show --output json`` or ``history export``).

    Raises:
        ValueError: Not a JSON history (one line naming the file).
    """
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as err:
        raise ValueError(f"cannot read history {path}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("events"), list) or not data["events"]:
        raise ValueError(f"{path} is not a workflow history: expected a JSON object with a non-empty 'events' list")
    first = data["events"][0].get("workflowExecutionStartedEventAttributes", {})
    workflow_id = first.get("workflowId") or path.stem
    return WorkflowHistory.from_json(workflow_id, data)


async def fetch_history(client: Client, workflow_id: str, run_id: str | None = None) -> WorkflowHistory:
    """Fetch a whole history from the server (all pages)."""
    return await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()


def history_json(history: WorkflowHistory) -> bytes:
    """The history as indented JSON bytes, the format ``temporal workflow show --output json`` writes."""
    return orjson.dumps(history.to_json_dict(), option=orjson.OPT_INDENT_2)


_EVENT_ID = re.compile(r"event(?:[ _]?id)?[ :=]+(\d+)", re.IGNORECASE)


async def replay(
    histories: Iterable[tuple[str, WorkflowHistory]],
    *,
    workflows: Sequence[type] = (ConnectWorkflow,),
    data_converter: DataConverter = pydantic_data_converter,
    debug: bool = False,
) -> list[ReplayOutcome]:
    """Replay each history against the current ``ConnectWorkflow`` code.

    Args:
        histories: ``(source label, history)`` pairs.
        workflows: Workflow classes to replay with (tests pass a deliberately changed copy).
        data_converter: The converter the histories were written with: ``worker.codec.data_converter()`` for
            encrypted histories (plain payloads in them still decode).
        debug: The SDK's debug mode: no deadlock detection, so workflow code may stop at a breakpoint for longer
            than the 2 s a workflow task otherwise gets (Temporal docs, "Debugging").

    Returns:
        One outcome per history, in order.
    """
    replayer = Replayer(workflows=list(workflows), data_converter=data_converter, debug_mode=debug)
    outcomes: list[ReplayOutcome] = []
    for source, history in histories:
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        failure = result.replay_failure
        if failure is None:
            outcomes.append(ReplayOutcome(source=source, ok=True))
            continue
        text = " ".join(str(failure).split())
        match = _EVENT_ID.search(text)
        outcomes.append(
            ReplayOutcome(
                source=source,
                ok=False,
                error=f"{type(failure).__name__}: {text}"[:500],
                event_id=int(match.group(1)) if match else None,
            )
        )
    return outcomes
