"""The echo backend: templated replies, and templates rejected when the backend is built."""

from __future__ import annotations

import pytest

from activities.a2a import A2AMessage, TextPart
from activities.backends.base import BackendConfigError, BackendRequest
from activities.backends.echo import EchoBackend


def _request(text: str = "hello", *, source_id: str | None = "ws-peer", context_id: str | None = "ctx-1"):
    return BackendRequest(
        workspace_id="ws-1",
        row_id="row-7",
        source_id=source_id,
        lane=context_id or source_id or "canvas",
        message=A2AMessage(message_id="msg-1", context_id=context_id, parts=[TextPart(text=text)]),
        text=text,
    )


async def test_echo_default_template_prefixes_text():
    response = await EchoBackend({}).handle(_request("hello"))

    assert response.parts == [TextPart(text="echo: hello")]


async def test_echo_custom_template_fills_every_placeholder():
    backend = EchoBackend({"template": "[{source}/{context_id}/{row_id}] {text}"})

    response = await backend.handle(_request("hi"))

    assert response.parts == [TextPart(text="[ws-peer/ctx-1/row-7] hi")]


async def test_echo_canvas_message_without_context_fills_canvas_and_empty():
    backend = EchoBackend({"template": "{source}|{context_id}|{text}"})

    response = await backend.handle(_request("hi", source_id=None, context_id=None))

    assert response.parts == [TextPart(text="canvas||hi")]


async def test_echo_braces_in_message_text_are_sent_verbatim():
    """The text is a value, not part of the template, so it is never formatted."""
    response = await EchoBackend({"template": "{{literal}} {text}"}).handle(_request("{row_id} {0}"))

    assert response.parts == [TextPart(text="{literal} {row_id} {0}")]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("hi {user}", "unknown placeholder {user}"),
        ("{text.upper}", "unknown placeholder {text.upper}"),
        ("{}", "unknown placeholder {}"),
        ("{text", "malformed template"),
        ("{text:d}", "malformed template"),
        ("{text:{row_id}}", "nested placeholders"),
    ],
)
def test_echo_bad_template_raises_config_error_at_construction(template: str, expected: str):
    with pytest.raises(BackendConfigError, match="^echo: option 'template': ") as caught:
        EchoBackend({"template": template})

    assert expected in str(caught.value)


def test_echo_unknown_option_raises_config_error():
    with pytest.raises(BackendConfigError, match=r"^echo: unknown option 'tmpl' \(known: template\)$"):
        EchoBackend({"tmpl": "x"})
