"""The A2A normalizer (docs/protocol.md §5 table), inbound parsing, and the reply shape we send to peers."""

from __future__ import annotations

import copy
import uuid

import pytest

from activities.a2a import (
    A2AMessage,
    DataPart,
    FileContent,
    FilePart,
    MalformedMessageError,
    TextPart,
    build_reply_request,
    normalize_request,
    parse_inbound,
    reply_message_id,
)

NO_PARTS_NOR_CONTENT = "params.message must contain either 'parts' (v0.3) or 'content' (v0.2 compat)"


def envelope(message: dict, *, method: str = "message/send") -> dict:
    return {"jsonrpc": "2.0", "id": "req-1", "method": method, "params": {"message": message}}


def is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


# --- normalize_request: one test per row of the docs/protocol.md §5 table ----------------------------------------


def test_normalize_request_without_jsonrpc_is_rewrapped_with_uuid_id() -> None:
    body = {"method": "message/send", "params": {"message": {"role": "user", "messageId": "m1", "parts": []}}}
    out = normalize_request(body)
    assert set(out) == {"jsonrpc", "id", "method", "params"}
    assert out["jsonrpc"] == "2.0"
    assert is_uuid(out["id"])
    assert out["method"] == "message/send"
    assert out["params"]["message"]["messageId"] == "m1"


def test_normalize_request_without_jsonrpc_drops_other_top_level_keys() -> None:
    out = normalize_request({"method": "tasks/get", "params": {"id": "t1"}, "extra": 1})
    assert "extra" not in out
    assert out["method"] == "tasks/get" and out["params"] == {"id": "t1"}


def test_normalize_request_without_jsonrpc_ids_differ_per_call() -> None:
    body = {"method": "tasks/get", "params": {"id": "t1"}}
    assert normalize_request(body)["id"] != normalize_request(body)["id"]


def test_normalize_request_missing_message_id_is_filled_with_uuid() -> None:
    out = normalize_request(envelope({"role": "user", "parts": [{"kind": "text", "text": "hi"}]}))
    assert is_uuid(out["params"]["message"]["messageId"])


def test_normalize_request_empty_message_id_is_filled_with_uuid() -> None:
    out = normalize_request(envelope({"messageId": "", "parts": []}))
    assert is_uuid(out["params"]["message"]["messageId"])


def test_normalize_request_existing_message_id_is_kept() -> None:
    out = normalize_request(envelope({"messageId": "m-7", "parts": []}))
    assert out["params"]["message"]["messageId"] == "m-7"


def test_normalize_request_missing_role_becomes_user() -> None:
    out = normalize_request(envelope({"messageId": "m1", "parts": []}))
    assert out["params"]["message"]["role"] == "user"


def test_normalize_request_existing_role_is_kept() -> None:
    out = normalize_request(envelope({"messageId": "m1", "role": "agent", "parts": []}))
    assert out["params"]["message"]["role"] == "agent"


def test_normalize_request_string_content_becomes_one_text_part() -> None:
    out = normalize_request(envelope({"messageId": "m1", "content": "hello"}))
    message = out["params"]["message"]
    assert message["parts"] == [{"kind": "text", "text": "hello"}]
    assert "content" not in message


def test_normalize_request_list_content_becomes_parts() -> None:
    content = [{"kind": "text", "text": "a"}, {"kind": "data", "data": {"k": 1}}]
    out = normalize_request(envelope({"messageId": "m1", "content": content}))
    message = out["params"]["message"]
    assert message["parts"] == content
    assert "content" not in message


def test_normalize_request_null_parts_falls_back_to_content() -> None:
    out = normalize_request(envelope({"messageId": "m1", "parts": None, "content": "x"}))
    assert out["params"]["message"]["parts"] == [{"kind": "text", "text": "x"}]


@pytest.mark.parametrize("content", [42, 1.5, True, {"text": "hi"}, None])
def test_normalize_request_content_of_other_type_raises_platform_text(content: object) -> None:
    with pytest.raises(MalformedMessageError) as info:
        normalize_request(envelope({"messageId": "m1", "content": content}))
    assert info.value.reason == "invalid params.message.content type"
    assert str(info.value) == "invalid params.message.content type"


def test_normalize_request_neither_parts_nor_content_raises_platform_text() -> None:
    with pytest.raises(MalformedMessageError) as info:
        normalize_request(envelope({"messageId": "m1", "role": "user"}))
    assert info.value.reason == NO_PARTS_NOR_CONTENT


def test_normalize_request_neither_parts_nor_content_without_jsonrpc_raises() -> None:
    with pytest.raises(MalformedMessageError) as info:
        normalize_request({"method": "message/send", "params": {"message": {}}})
    assert info.value.reason == NO_PARTS_NOR_CONTENT


def test_normalize_request_type_key_is_renamed_to_kind() -> None:
    out = normalize_request(envelope({"messageId": "m1", "parts": [{"type": "text", "text": "hi"}]}))
    assert out["params"]["message"]["parts"] == [{"kind": "text", "text": "hi"}]


def test_normalize_request_kind_wins_over_type() -> None:
    """A part carrying both keys keeps its kind; type is left alone."""
    out = normalize_request(envelope({"messageId": "m1", "parts": [{"kind": "text", "type": "x", "text": "hi"}]}))
    assert out["params"]["message"]["parts"][0]["kind"] == "text"


def test_normalize_request_type_in_list_content_is_renamed_to_kind() -> None:
    out = normalize_request(envelope({"messageId": "m1", "content": [{"type": "text", "text": "hi"}]}))
    assert out["params"]["message"]["parts"] == [{"kind": "text", "text": "hi"}]


def test_normalize_request_file_mime_type_is_renamed_to_mime_type_camel() -> None:
    part = {"type": "file", "file": {"uri": "workspace:a.pdf", "mime_type": "application/pdf"}}
    out = normalize_request(envelope({"messageId": "m1", "parts": [part]}))
    assert out["params"]["message"]["parts"] == [
        {"kind": "file", "file": {"uri": "workspace:a.pdf", "mimeType": "application/pdf"}}
    ]


def test_normalize_request_file_mime_type_camel_wins() -> None:
    part = {"kind": "file", "file": {"uri": "u", "mimeType": "text/plain", "mime_type": "x/old"}}
    out = normalize_request(envelope({"messageId": "m1", "parts": [part]}))
    assert out["params"]["message"]["parts"][0]["file"]["mimeType"] == "text/plain"


def test_normalize_request_without_params_message_passes_through() -> None:
    body = {"jsonrpc": "2.0", "id": "9", "method": "tasks/get", "params": {"id": "task-1", "content": 5}}
    assert normalize_request(body) == body


def test_normalize_request_without_params_passes_through() -> None:
    body = {"jsonrpc": "2.0", "id": "9", "method": "ping"}
    assert normalize_request(body) == body


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_normalize_request_not_an_object_raises_invalid_json(body: object) -> None:
    with pytest.raises(MalformedMessageError) as info:
        normalize_request(body)
    assert info.value.reason == "invalid JSON"


def test_normalize_request_input_is_not_mutated() -> None:
    body = envelope({"content": [{"type": "file", "file": {"uri": "u", "mime_type": "a/b"}}]})
    before = copy.deepcopy(body)
    normalize_request(body)
    assert body == before


def test_normalize_request_other_message_fields_are_kept() -> None:
    message = {"messageId": "m1", "contextId": "c1", "taskId": "t1", "metadata": {"k": 1}, "parts": []}
    out = normalize_request(envelope(message))
    assert out["params"]["message"] == {**message, "role": "user"}
    assert out["id"] == "req-1"


# --- parse_inbound ------------------------------------------------------------------------------------------


def test_parse_inbound_text_parts_joined_in_order() -> None:
    parts = [{"kind": "text", "text": "one"}, {"kind": "data", "data": {}}, {"kind": "text", "text": "two"}]
    parsed = parse_inbound(envelope({"messageId": "m1", "contextId": "c1", "parts": parts}))
    assert parsed.text == "one\ntwo"
    assert [p.kind for p in parsed.message.parts] == ["text", "data", "text"]
    assert parsed.message.message_id == "m1"
    assert parsed.message.context_id == "c1"
    assert parsed.unsupported_parts == 0


def test_parse_inbound_message_parts_come_first() -> None:
    body = envelope({"messageId": "m1", "parts": [{"kind": "text", "text": "message"}]})
    body["params"]["parts"] = [{"kind": "text", "text": "params"}]
    body["parts"] = [{"kind": "text", "text": "top"}]
    assert parse_inbound(body).text == "message"


def test_parse_inbound_empty_message_parts_fall_back_to_params_parts() -> None:
    body = envelope({"messageId": "m1", "parts": []})
    body["params"]["parts"] = [{"kind": "text", "text": "params"}]
    body["parts"] = [{"kind": "text", "text": "top"}]
    assert parse_inbound(body).text == "params"


def test_parse_inbound_params_parts_without_message_are_used() -> None:
    body = {
        "jsonrpc": "2.0",
        "id": "1",
        "method": "message/send",
        "params": {"parts": [{"type": "text", "text": "p"}]},
    }
    assert parse_inbound(body).text == "p"


def test_parse_inbound_top_level_parts_are_used_last() -> None:
    body = {
        "jsonrpc": "2.0",
        "id": "1",
        "method": "message/send",
        "params": {},
        "parts": [{"kind": "text", "text": "t"}],
    }
    assert parse_inbound(body).text == "t"


def test_parse_inbound_top_level_parts_without_params_are_used() -> None:
    parsed = parse_inbound({"parts": [{"type": "text", "text": "bare"}]})
    assert parsed.text == "bare"
    assert parsed.message.role == "user"


def test_parse_inbound_message_id_without_message_is_deterministic() -> None:
    body = {"parts": [{"kind": "text", "text": "bare"}]}
    assert parse_inbound(body).message.message_id == parse_inbound(copy.deepcopy(body)).message.message_id


def test_parse_inbound_legacy_type_parts_are_read_as_kind() -> None:
    """docs/protocol.md §9.2: reading only ``type`` (or only ``kind``) loses text."""
    parsed = parse_inbound(envelope({"messageId": "m1", "parts": [{"type": "text", "text": "legacy"}]}))
    assert parsed.text == "legacy"


def test_parse_inbound_v02_string_content_is_read() -> None:
    parsed = parse_inbound({"method": "message/send", "params": {"message": {"content": "old"}}})
    assert parsed.text == "old"
    assert parsed.message.role == "user"
    assert is_uuid(parsed.message.message_id)


def test_parse_inbound_unknown_part_kinds_are_counted() -> None:
    parts = [
        {"kind": "text", "text": "ok"},
        {"kind": "audio", "audio": "..."},
        {"kind": "text"},  # no text: does not validate
        "not a part",
        {"no": "kind"},
    ]
    parsed = parse_inbound(envelope({"messageId": "m1", "parts": parts}))
    assert parsed.text == "ok"
    assert parsed.unsupported_parts == 4
    assert len(parsed.message.parts) == 1


def test_parse_inbound_only_unsupported_parts_raises() -> None:
    with pytest.raises(MalformedMessageError) as info:
        parse_inbound(envelope({"messageId": "m1", "parts": [{"kind": "audio"}, {"kind": "video"}]}))
    assert info.value.reason == "no usable parts (2 unsupported)"


def test_parse_inbound_no_parts_anywhere_raises() -> None:
    with pytest.raises(MalformedMessageError):
        parse_inbound({"jsonrpc": "2.0", "id": "1", "method": "message/send", "params": {}})


def test_parse_inbound_empty_parts_raises() -> None:
    with pytest.raises(MalformedMessageError) as info:
        parse_inbound(envelope({"messageId": "m1", "parts": []}))
    assert info.value.reason == "no usable parts (0 unsupported)"


def test_parse_inbound_neither_parts_nor_content_raises_platform_text() -> None:
    with pytest.raises(MalformedMessageError) as info:
        parse_inbound(envelope({"messageId": "m1"}))
    assert info.value.reason == NO_PARTS_NOR_CONTENT


@pytest.mark.parametrize("body", [None, [], "hi", 7])
def test_parse_inbound_not_an_object_raises(body: object) -> None:
    with pytest.raises(MalformedMessageError):
        parse_inbound(body)


def test_parse_inbound_file_part_with_uri() -> None:
    part = {
        "kind": "file",
        "file": {"uri": "workspace:report.pdf", "mimeType": "application/pdf", "name": "r.pdf"},
    }
    parsed = parse_inbound(envelope({"messageId": "m1", "parts": [part]}))
    (file_part,) = parsed.message.parts
    assert isinstance(file_part, FilePart)
    assert file_part.file == FileContent(uri="workspace:report.pdf", mime_type="application/pdf", name="r.pdf")
    assert file_part.file.bytes is None
    assert parsed.text == ""


def test_parse_inbound_file_part_with_bytes_and_legacy_mime_type() -> None:
    part = {"type": "file", "file": {"bytes": "aGk=", "mime_type": "text/plain"}}
    parsed = parse_inbound(envelope({"messageId": "m1", "parts": [part]}))
    (file_part,) = parsed.message.parts
    assert isinstance(file_part, FilePart)
    assert file_part.file.bytes == "aGk="
    assert file_part.file.uri is None
    assert file_part.file.mime_type == "text/plain"


def test_parse_inbound_data_part() -> None:
    parsed = parse_inbound(envelope({"messageId": "m1", "parts": [{"kind": "data", "data": {"k": "v", "n": [1]}}]}))
    (data_part,) = parsed.message.parts
    assert isinstance(data_part, DataPart)
    assert data_part.data == {"k": "v", "n": [1]}


def test_parse_inbound_data_part_not_an_object_is_unsupported() -> None:
    parts = [{"kind": "data", "data": [1, 2]}, {"kind": "text", "text": "t"}]
    parsed = parse_inbound(envelope({"messageId": "m1", "parts": parts}))
    assert parsed.unsupported_parts == 1


def test_parse_inbound_task_id_and_metadata_are_kept() -> None:
    message = {
        "messageId": "m1",
        "taskId": "t1",
        "metadata": {"auto_reply_depth": 2},
        "parts": [{"kind": "text", "text": "x"}],
    }
    parsed = parse_inbound(envelope(message))
    assert parsed.message.task_id == "t1"
    assert parsed.message.metadata == {"auto_reply_depth": 2}


def test_parse_inbound_unknown_role_becomes_user() -> None:
    parsed = parse_inbound(envelope({"messageId": "m1", "role": "assistant", "parts": [{"kind": "text", "text": "x"}]}))
    assert parsed.message.role == "user"


def test_parse_inbound_unknown_message_fields_are_ignored() -> None:
    message = {"messageId": "m1", "parts": [{"kind": "text", "text": "x"}], "futureField": {"a": 1}}
    assert parse_inbound(envelope(message)).text == "x"


# --- build_reply_request / reply_message_id -----------------------------------------------------------------


def inbound(*, task_id: str | None = None) -> A2AMessage:
    return A2AMessage(message_id="in-1", context_id="ctx-1", task_id=task_id, parts=[TextPart(text="ping")])


def test_build_reply_request_shape_matches_protocol() -> None:
    request = build_reply_request(
        message_id="reply-1",
        request_id="req-1",
        parts=[TextPart(text="pong")],
        in_reply_to=inbound(),
        row_id="row-1",
    )
    assert request == {
        "jsonrpc": "2.0",
        "id": "req-1",
        "method": "message/send",
        "params": {
            "message": {
                "role": "agent",
                "messageId": "reply-1",
                "contextId": "ctx-1",
                "referenceTaskIds": [],
                "parts": [{"kind": "text", "text": "pong"}],
                "metadata": {"in_reply_to": "in-1", "activity_id": "row-1"},
            }
        },
    }


def test_build_reply_request_carries_task_id_when_present() -> None:
    request = build_reply_request(
        message_id="r",
        request_id="q",
        parts=[TextPart(text="x")],
        in_reply_to=inbound(task_id="task-9"),
        row_id="row",
    )
    assert request["params"]["message"]["taskId"] == "task-9"


def test_build_reply_request_omits_task_id_when_absent() -> None:
    request = build_reply_request(
        message_id="r", request_id="q", parts=[TextPart(text="x")], in_reply_to=inbound(), row_id="row"
    )
    assert "taskId" not in request["params"]["message"]


def test_build_reply_request_parts_are_kind_camel_case_without_nulls() -> None:
    parts = [
        TextPart(text="a"),
        FilePart(file=FileContent(uri="workspace:x.png", mime_type="image/png")),
        DataPart(data={"k": "v"}),
    ]
    request = build_reply_request(message_id="r", request_id="q", parts=parts, in_reply_to=inbound(), row_id="row")
    assert request["params"]["message"]["parts"] == [
        {"kind": "text", "text": "a"},
        {"kind": "file", "file": {"uri": "workspace:x.png", "mimeType": "image/png"}},
        {"kind": "data", "data": {"k": "v"}},
    ]


def test_build_reply_request_extra_metadata_is_merged() -> None:
    request = build_reply_request(
        message_id="r",
        request_id="q",
        parts=[TextPart(text="x")],
        in_reply_to=inbound(),
        row_id="row",
        extra_metadata={"auto_reply_depth": 1},
    )
    assert request["params"]["message"]["metadata"] == {
        "in_reply_to": "in-1",
        "activity_id": "row",
        "auto_reply_depth": 1,
    }


def test_reply_message_id_same_inputs_same_uuid() -> None:
    first = reply_message_id("ws-1", "row-1")
    assert first == reply_message_id("ws-1", "row-1")
    assert uuid.UUID(first).version == 5


def test_reply_message_id_differs_per_row_and_workspace() -> None:
    ids = {
        reply_message_id("ws-1", "row-1"),
        reply_message_id("ws-1", "row-2"),
        reply_message_id("ws-2", "row-1"),
    }
    assert len(ids) == 3
