"""``molecule-connect schema``: the JSON Schemas of the connector's input, updates, signals and queries."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from worker.cli.common import UsageProblem

app = typer.Typer()


def schema_json(name: str) -> bytes:
    """One schema as indented JSON with a final newline (the committed ``docs/schema/<name>.json``)."""
    from worker.schema import SCHEMAS

    return orjson.dumps(SCHEMAS[name].json_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


@app.command("schema")
def schema_command(
    name: Annotated[
        str | None,
        typer.Argument(
            help="One shape, e.g. ConnectInput or SetCursorInput; all of them (an object by name) if left out."
        ),
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help="Write <Name>.json files here instead of printing.")
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the shapes and where each is used.")] = False,
) -> None:
    """Print the JSON Schema of ConnectInput and of each update, signal and query input and answer."""
    from worker.schema import SCHEMAS

    if list_:
        for key, schema in SCHEMAS.items():
            print(f"{key:<24} {schema.used_by}")
        return
    if name is not None and name not in SCHEMAS:
        raise UsageProblem(f"no schema named {name!r}: one of {', '.join(SCHEMAS)}")
    names = [name] if name else list(SCHEMAS)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        for key in names:
            (output_dir / f"{key}.json").write_bytes(schema_json(key))
        print(f"wrote {len(names)} schema(s) to {output_dir}", file=sys.stderr)
    elif name:
        sys.stdout.write(schema_json(name).decode())
    else:
        every = {key: SCHEMAS[key].json_schema() for key in names}
        print(orjson.dumps(every, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
