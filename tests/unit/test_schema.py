"""The published JSON Schemas: ``docs/schema/*.json`` equal what the models say, and ``molecule-connect schema``
prints them; a ``ConnectInput`` typed from the schema's required fields is accepted by the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.cli import main
from worker.cli.schema import schema_json
from worker.schema import SCHEMAS
from workflows.messages import ConnectInput

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schema"


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_committed_schema_matches_the_model(name: str) -> None:
    committed = DOCS / f"{name}.json"
    assert committed.read_bytes() == schema_json(name), (
        f"docs/schema/{name}.json is stale: run `molecule-connect schema --output-dir docs/schema`"
    )


def test_no_stray_schema_files() -> None:
    assert sorted(p.stem for p in DOCS.glob("*.json")) == sorted(SCHEMAS)


def test_schema_command_prints_one_or_all(capsys: pytest.CaptureFixture[str]) -> None:
    main(["schema", "SetCursorInput"])
    one = json.loads(capsys.readouterr().out)
    assert one["required"] == ["row_id"] and one["title"] == "SetCursorInput"
    main(["schema"])
    every = json.loads(capsys.readouterr().out)
    assert set(every) == set(SCHEMAS)
    with pytest.raises(SystemExit) as exit:
        main(["schema", "Nope"])
    assert exit.value.code == 2
    assert "ConnectInput" in capsys.readouterr().err


def test_connect_input_schema_required_fields_are_enough() -> None:
    schema = json.loads((DOCS / "ConnectInput.json").read_text())
    assert schema["required"] == ["workspace_id", "platform_url"]
    minimal = {"workspace_id": "ws-1", "platform_url": "http://127.0.0.1:8080"}
    assert ConnectInput.model_validate(minimal).backend.name == "echo"
