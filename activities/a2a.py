"""A2A v0.3 message models and the inbound normalizer (docs/protocol.md §5).

The normalizer is the one home of the platform's rewrite table: the devplatform applies it to what senders post
(turning :class:`MalformedMessageError` into ``400``), and the connector applies it again, tolerantly, to what it
reads from the inbox, because older platforms store bodies un-normalized.

Wire names are camelCase (``messageId``, ``contextId``); Python fields are snake_case with aliases.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag
from pydantic.alias_generators import to_camel


class MalformedMessageError(ValueError):
    """An A2A request body that cannot be normalized.

    Attributes:
        reason: One line, the same text the platform puts in its ``400 {"error": ...}`` body.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WireModel(BaseModel):
    """Base of A2A wire models: frozen, camelCase on the wire, tolerant of unknown fields."""

    model_config = ConfigDict(
        frozen=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )


class FileContent(WireModel):
    """The ``file`` of a file part: a ``uri`` or base64 ``bytes`` (A2A v0.3 §6.6)."""

    uri: str | None = None
    """Where the file lives, e.g. ``workspace:report.pdf``."""
    bytes: str | None = None
    """Base64 content, when the file is inline."""
    name: str | None = None
    """File name shown to users."""
    mime_type: str | None = None
    """MIME type (``mimeType``; ``mime_type`` accepted from older senders)."""


class TextPart(WireModel):
    """A text part (A2A v0.3 §6.5.1)."""

    kind: Literal["text"] = "text"
    text: str
    """The text."""
    metadata: dict[str, Any] | None = None


class FilePart(WireModel):
    """A file part (A2A v0.3 §6.5.2)."""

    kind: Literal["file"] = "file"
    file: FileContent
    """The file reference or inline bytes."""
    metadata: dict[str, Any] | None = None


class DataPart(WireModel):
    """A structured-data part (A2A v0.3 §6.5.3)."""

    kind: Literal["data"] = "data"
    data: dict[str, Any]
    """Arbitrary JSON object."""
    metadata: dict[str, Any] | None = None


Part = Annotated[
    Annotated[TextPart, Tag("text")] | Annotated[FilePart, Tag("file")] | Annotated[DataPart, Tag("data")],
    Discriminator("kind"),
]
"""One message part, discriminated on ``kind`` (older ``type`` keys are renamed by :func:`normalize_request`)."""


class A2AMessage(WireModel):
    """An A2A v0.3 ``Message`` (A2A v0.3 §6.4)."""

    role: Literal["user", "agent"] = "user"
    """``user`` for inbound requests, ``agent`` for our replies."""
    message_id: str
    """Sender's id. Our reply's messageId is derived from the inbound row, so a retried reply keeps its id."""
    context_id: str | None = None
    """Conversation id; replies carry the inbound one so they land in the same conversation."""
    task_id: str | None = None
    """Task the message belongs to, when any."""
    reference_task_ids: list[str] | None = None
    """Related tasks (we send ``[]``)."""
    parts: list[Part] = Field(default_factory=list)
    """Content, in order."""
    metadata: dict[str, Any] | None = None
    """Free-form metadata; our replies set ``in_reply_to``, ``activity_id`` and ``auto_reply_depth``."""
    kind: Literal["message"] | None = None


def _part_from_raw(raw: Any) -> dict[str, Any]:
    """Rename legacy keys of one part (``type`` → ``kind``, ``mime_type`` → ``mimeType``)."""
    if not isinstance(raw, dict):
        return {"kind": "unknown", "value": raw}
    part = dict(raw)
    if "kind" not in part and "type" in part:
        part["kind"] = part.pop("type")
    file = part.get("file")
    if isinstance(file, dict) and "mimeType" not in file and "mime_type" in file:
        file = dict(file)
        file["mimeType"] = file.pop("mime_type")
        part["file"] = file
    return part


def normalize_request(body: Any) -> dict[str, Any]:
    """Normalize a posted A2A request body, following the platform's table (docs/protocol.md §5).

    Args:
        body: The decoded JSON body (any JSON value).

    Returns:
        A new JSON-RPC 2.0 envelope ``{"jsonrpc": "2.0", "id", "method", "params"}`` whose ``params.message``
        (when present) has a ``messageId``, a ``role`` and ``parts`` with ``kind`` keys. Bodies without
        ``params.message`` (e.g. ``tasks/get``) are passed through, only rewrapped.

    Raises:
        MalformedMessageError: The body is not an object, or ``params.message`` has neither ``parts`` nor a usable
            ``content``; ``reason`` is the platform's 400 text.
    """
    if not isinstance(body, dict):
        raise MalformedMessageError("invalid JSON")
    if "jsonrpc" not in body:
        body = {"jsonrpc": "2.0", "id": str(uuid.uuid4()), "method": body.get("method"), "params": body.get("params")}
    else:
        body = dict(body)
    params = body.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("message"), dict):
        return body
    message = dict(params["message"])
    if not message.get("messageId"):
        message["messageId"] = str(uuid.uuid4())
    if not message.get("role"):
        message["role"] = "user"
    if "parts" not in message or message["parts"] is None:
        if "content" not in message:
            raise MalformedMessageError("params.message must contain either 'parts' (v0.3) or 'content' (v0.2 compat)")
        content = message.pop("content")
        if isinstance(content, str):
            message["parts"] = [{"kind": "text", "text": content}]
        elif isinstance(content, list):
            message["parts"] = content
        else:
            raise MalformedMessageError("invalid params.message.content type")
    if isinstance(message["parts"], list):
        message["parts"] = [_part_from_raw(p) for p in message["parts"]]
    body["params"] = {**params, "message": message}
    return body


class ParsedMessage(BaseModel):
    """What the connector extracts from one inbound request body.

    Attributes:
        message: The normalized message; parts the models cannot represent are dropped from it.
        text: Text parts joined in order with a newline (docs/protocol.md §5, extraction order).
        unsupported_parts: How many parts were dropped because no known ``kind`` matched or they did not validate.
    """

    model_config = ConfigDict(frozen=True)

    message: A2AMessage
    text: str
    unsupported_parts: int = 0


def _object(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def _raw_parts(body: dict[str, Any]) -> Any:
    """Parts in the platform's extraction order: ``params.message.parts``, ``params.parts``, ``parts``."""
    params = _object(body.get("params"))
    message = _object(params.get("message"))
    for candidate in (message.get("parts"), params.get("parts"), body.get("parts")):
        if isinstance(candidate, list) and candidate:
            return candidate
    return message.get("parts") if isinstance(message.get("parts"), list) else None


def parse_inbound(body: Any) -> ParsedMessage:
    """Parse an inbox row's ``request_body`` into a message and its text (docs/protocol.md §4–5).

    Tolerant: applies :func:`normalize_request` first, reads ``type`` as ``kind``, falls back to ``params.parts`` and
    top-level ``parts``, and counts rather than rejects parts it does not know.

    Args:
        body: The row's ``request_body`` (decoded JSON).

    Returns:
        The parsed message.

    Raises:
        MalformedMessageError: Nothing usable: not an object, no parts anywhere, or no text/file/data part at all.
    """
    normalized = body
    normalize_error: MalformedMessageError | None = None
    if isinstance(body, dict) and isinstance(body.get("params"), dict):
        try:
            normalized = normalize_request(body)
        except MalformedMessageError as err:
            normalize_error = err  # params.parts or top-level parts may still hold the content
    if not isinstance(normalized, dict):
        raise MalformedMessageError("request body is not a JSON object")
    raw_parts = _raw_parts(normalized)
    if raw_parts is None:
        raise normalize_error or MalformedMessageError("request body has no message parts")
    parts: list[TextPart | FilePart | DataPart] = []
    unsupported = 0
    for raw in raw_parts:
        part = _part_from_raw(raw)
        try:
            if part.get("kind") == "text":
                parts.append(TextPart.model_validate(part))
            elif part.get("kind") == "file":
                parts.append(FilePart.model_validate(part))
            elif part.get("kind") == "data":
                parts.append(DataPart.model_validate(part))
            else:
                unsupported += 1
        except ValueError:
            unsupported += 1
    if not parts:
        raise MalformedMessageError(f"no usable parts ({unsupported} unsupported)")
    params = _object(normalized.get("params"))
    raw_message = _object(params.get("message"))
    fields = {k: v for k, v in raw_message.items() if k not in ("parts", "content")}
    fields.setdefault("messageId", str(uuid.uuid5(uuid.NAMESPACE_URL, repr(body))))
    if fields.get("role") not in ("user", "agent"):
        fields["role"] = "user"
    try:
        message = A2AMessage.model_validate({**fields, "parts": []}).model_copy(update={"parts": parts})
    except ValueError as err:
        raise MalformedMessageError(f"invalid params.message: {str(err).splitlines()[0]}") from err
    text = "\n".join(p.text for p in parts if isinstance(p, TextPart))
    return ParsedMessage(message=message, text=text, unsupported_parts=unsupported)


def build_reply_request(
    *,
    message_id: str,
    request_id: str,
    parts: list[TextPart | FilePart | DataPart],
    in_reply_to: A2AMessage | None,
    row_id: str,
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the ``message/send`` request that replies to a peer (docs/protocol.md §5, "Replies the connector sends").

    Args:
        message_id: Deterministic reply messageId (see :func:`reply_message_id`).
        request_id: JSON-RPC request id (also deterministic, so a retry is byte-identical).
        parts: Reply parts.
        in_reply_to: The inbound message; its ``contextId`` and ``taskId`` are carried over. ``None`` for a body
            that could not be parsed: the reply then has no conversation context and no ``in_reply_to``.
        row_id: The inbound activity row id, sent as ``metadata.activity_id``.
        extra_metadata: Merged into ``metadata`` (e.g. ``auto_reply_depth``).

    Returns:
        A JSON-RPC 2.0 request object, ready for ``POST /workspaces/{source_id}/a2a``.
    """
    metadata: dict[str, Any] = {"activity_id": row_id}
    if in_reply_to is not None:
        metadata = {"in_reply_to": in_reply_to.message_id, **metadata}
    metadata.update(extra_metadata or {})
    message: dict[str, Any] = {
        "role": "agent",
        "messageId": message_id,
        "referenceTaskIds": [],
        "parts": [p.model_dump(mode="json", by_alias=True, exclude_none=True) for p in parts],
        "metadata": metadata,
    }
    if in_reply_to is not None and in_reply_to.context_id:
        message["contextId"] = in_reply_to.context_id
    if in_reply_to is not None and in_reply_to.task_id:
        message["taskId"] = in_reply_to.task_id
    return {"jsonrpc": "2.0", "id": request_id, "method": "message/send", "params": {"message": message}}


REPLY_NAMESPACE = uuid.UUID("6f1d0c2e-8a53-4c1e-9a0b-5d1f3e7c2b41")
"""UUIDv5 namespace of reply ids; changing it would make retried replies look new to the platform."""


def reply_message_id(workspace_id: str, row_id: str, *, error: bool = False) -> str:
    """The deterministic messageId of our reply to one inbound row (docs/protocol.md §3.4).

    The error reply of a dead letter has its own id: sharing the answer's id would make the platform drop the real
    answer sent after a redrive as a duplicate of the error reply.

    Args:
        workspace_id: Our workspace id.
        row_id: The inbound activity row id.
        error: The id of the error reply (the message was dead-lettered) rather than of the answer.

    Returns:
        A UUIDv5 string, identical on every retry, so the platform stores the reply once.
    """
    return str(uuid.uuid5(REPLY_NAMESPACE, f"{workspace_id}/{row_id}" + ("/error" if error else "")))
