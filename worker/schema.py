"""JSON Schemas of what crosses the ``ConnectWorkflow`` boundary: its input, and its updates', signals' and queries'.

Any client (the ``temporal`` CLI, ``tctl``, a Go or TypeScript SDK) starts and operates a connector with plain JSON
in these shapes (the pydantic models of ``workflows/messages.py``). ``molecule-connect schema`` prints them; a copy
is committed under ``docs/schema/`` (one ``<Name>.json`` each) and a test keeps it equal to the models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from workflows.messages import (
    ConfigureInput,
    ConnectInput,
    ConnectResult,
    DeadLetterActionResult,
    DeadLetterList,
    DeadLetterPage,
    DeadLetterSelection,
    SetCursorInput,
    StatusResult,
)


@dataclass(frozen=True)
class Schema:
    """One published shape.

    Attributes:
        model: The pydantic model.
        mode: ``validation`` for what a client sends (defaults may be left out), ``serialization`` for what it gets.
        used_by: Where it appears, e.g. ``input of the set_cursor update and signal``.
    """

    model: type[BaseModel]
    mode: Literal["validation", "serialization"]
    used_by: str

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema (pydantic's, draft 2020-12), with a ``$comment`` saying where the shape is used."""
        schema = self.model.model_json_schema(mode=self.mode)
        schema["$comment"] = f"molecule-connect ConnectWorkflow: {self.used_by}"
        return schema


SCHEMAS: dict[str, Schema] = {
    "ConnectInput": Schema(ConnectInput, "validation", "workflow input (temporal workflow start --input)"),
    "SetCursorInput": Schema(SetCursorInput, "validation", "input of the set_cursor update and signal"),
    "DeadLetterSelection": Schema(DeadLetterSelection, "validation", "input of the redrive, discard updates/signals"),
    "ConfigureInput": Schema(ConfigureInput, "validation", "input of the configure update and signal"),
    "DeadLetterPage": Schema(DeadLetterPage, "validation", "input of the dead_letters query"),
    "StatusResult": Schema(StatusResult, "serialization", "answer of the status query and of the other updates"),
    "DeadLetterList": Schema(DeadLetterList, "serialization", "answer of the dead_letters query"),
    "DeadLetterActionResult": Schema(DeadLetterActionResult, "serialization", "result of the redrive, discard updates"),
    "ConnectResult": Schema(ConnectResult, "serialization", "workflow result (after drain)"),
}  # fmt: skip
"""Every published shape by name; the names are those of the models (and of ``docs/schema/<Name>.json``)."""
