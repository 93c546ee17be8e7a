"""The exec backend's JSON mode: the whole request on stdin, ``{"parts": [...]}`` or plain text on stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from activities.a2a import A2AMessage, DataPart, FilePart, TextPart
from activities.backends.base import BackendConfigError, BackendError, BackendRequest
from activities.backends.exec import ExecBackend
from activities.backends.process import ExecFailedError


def _request(text: str = "hello") -> BackendRequest:
    return BackendRequest(
        workspace_id="ws-1",
        row_id="row-7",
        source_id="ws-peer",
        lane="ctx-1",
        message=A2AMessage(message_id="msg-1", context_id="ctx-1", parts=[TextPart(text=text)]),
        text=text,
    )


def _script(tmp_path: Path, body: str) -> str:
    """A Python agent reading the request from stdin as ``request``; returns the ``cmd`` option running it."""
    path = tmp_path / "agent.py"
    path.write_text("import json, sys\nrequest = json.load(sys.stdin)\n" + body)
    return f"{sys.executable} {path}"


@pytest.mark.parametrize("options", [{"format": "json"}, {"stdin": "json"}, {"format": "json", "stdin": "json"}])
async def test_exec_json_mode_parts_stdout_becomes_reply_parts(tmp_path: Path, options: dict[str, str]):
    cmd = _script(
        tmp_path,
        "print(json.dumps({'parts': [\n"
        "    {'kind': 'text', 'text': request['text'].upper()},\n"
        "    {'kind': 'data', 'data': {'row': request['row_id'], 'context': request['message']['contextId']}},\n"
        "    {'kind': 'file', 'file': {'uri': 'workspace:out.txt', 'mimeType': 'text/plain'}},\n"
        "]}))\n",
    )

    response = await ExecBackend({"cmd": cmd, **options}).handle(_request("hi"))

    assert response.parts == [
        TextPart(text="HI"),
        DataPart(data={"row": "row-7", "context": "ctx-1"}),
        FilePart.model_validate({"file": {"uri": "workspace:out.txt", "mimeType": "text/plain"}}),
    ]


async def test_exec_json_mode_stdin_holds_whole_request(tmp_path: Path):
    cmd = _script(tmp_path, "print(json.dumps({'parts': [{'kind': 'data', 'data': request}]}))\n")
    request = _request("whole")

    response = await ExecBackend({"cmd": cmd, "format": "json"}).handle(request)

    part = response.parts[0]
    assert isinstance(part, DataPart)
    assert part.data == request.model_dump(mode="json")


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ("plain words\n", "plain words"),
        ('{"text": "no parts key"}\n', '{"text": "no parts key"}'),
        ("[1, 2]\n", "[1, 2]"),
        ("{not json\n", "{not json"),
    ],
    ids=["text", "object-without-parts", "array", "broken-json"],
)
async def test_exec_json_mode_other_stdout_is_plain_text(tmp_path: Path, stdout: str, expected: str):
    cmd = _script(tmp_path, f"sys.stdout.write({stdout!r})\n")

    response = await ExecBackend({"cmd": cmd, "format": "json"}).handle(_request())

    assert response.parts == [TextPart(text=expected)]


async def test_exec_json_mode_empty_parts_is_empty_reply(tmp_path: Path):
    cmd = _script(tmp_path, "print('{\"parts\": []}')\n")

    response = await ExecBackend({"cmd": cmd, "format": "json"}).handle(_request())

    assert response.parts == [TextPart(text="")]


@pytest.mark.parametrize(
    ("parts", "where"),
    [
        ([{"kind": "text"}], "parts[0].text"),
        ([{"kind": "text", "text": "ok"}, {"kind": "video", "uri": "x"}], "parts[1]"),
        ("not a list", "parts"),
    ],
    ids=["text-without-text", "unknown-kind", "not-a-list"],
)
async def test_exec_json_mode_invalid_parts_raise_backend_error(tmp_path: Path, parts: object, where: str):
    cmd = _script(tmp_path, f"print(json.dumps({{'parts': {parts!r}}}))\n")

    with pytest.raises(BackendError, match=r"^exec: stdout is JSON with \"parts\" but (\S+) is invalid") as caught:
        await ExecBackend({"cmd": cmd, "format": "json"}).handle(_request())

    assert where in str(caught.value)


async def test_exec_text_mode_parts_json_stays_text(tmp_path: Path):
    """Without JSON mode a command printing JSON is quoting it: the reply is the text, not parsed parts."""
    stdout = json.dumps({"parts": [{"kind": "text", "text": "x"}]})

    response = await ExecBackend({"cmd": f"printf %s '{stdout}'"}).handle(_request())

    assert response.parts == [TextPart(text=stdout)]


async def test_exec_json_mode_nonzero_exit_raises_with_stderr_tail(tmp_path: Path):
    cmd = _script(tmp_path, "sys.stderr.write('model overloaded\\n' * 3 + 'giving up')\nsys.exit(3)\n")

    with pytest.raises(ExecFailedError) as caught:
        await ExecBackend({"cmd": cmd, "format": "json"}).handle(_request())

    assert caught.value.returncode == 3
    assert caught.value.stderr_tail.endswith("giving up")
    assert "exited with status 3: model overloaded" in str(caught.value)


def test_exec_format_json_with_stdin_text_raises_config_error():
    with pytest.raises(BackendConfigError, match="format=json means stdin=json"):
        ExecBackend({"cmd": "cat", "format": "json", "stdin": "text"})


def test_exec_format_json_sets_stdin_json():
    assert ExecBackend({"cmd": "cat", "format": "json"}).options.stdin == "json"
