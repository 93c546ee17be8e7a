"""Reading the inbox: decode the platform's answer row by row and apply the skip rules (docs/protocol.md §3.3–§4).

One unreadable row must never stop delivery (docs/protocol.md §8). The platform answers an inbox read with one JSON
array, and a single hostile row (a ``request_body`` nested past the decoder's depth limit, a lone UTF-16 surrogate)
makes the whole array undecodable at once. So :func:`decode_inbox` falls back to splitting the array into its rows
and decoding each one alone, then each field of an undecodable row alone: the row keeps its id, time, sender and
method, and only the field that cannot be read is lost, with the reason. :func:`row_to_polled` turns such a row into
a ``malformed`` row, which the workflow dead-letters (the cursor moves past it and the sender is told).

A row whose ``id`` is not a UUID cannot be a cursor (the platform answers ``500`` to ``since_id=<non-uuid>``), so it
is skipped and never becomes a cursor position (:attr:`activities.messages.RowPointer.usable`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from activities.a2a import MalformedMessageError, parse_inbound
from activities.messages import BodyRef, PolledRow

INBOX_TYPE = "a2a_receive"
DISPATCHED_METHODS = frozenset({"message/send", "message/stream"})
RESET_READ_LIMIT = 500
"""Rows re-read (newest first) after a 410 or without a cursor: the platform's maximum ``limit``."""
MAX_BATCH_BYTES = 768 * 1024
"""A poll result's rows stay under this many JSON bytes, well inside Temporal's 2 MiB payload limit (rest: next
poll). One carried row is at most :data:`BODY_REF_BYTES` + :data:`TEXT_COPY_BYTES`, so a row always fits."""
BODY_REF_BYTES = 256 * 1024
"""A deliverable row whose ``request_body`` is over this many JSON bytes is passed by reference: ``poll`` returns its
message without parts plus a ``BodyRef``, and ``dispatch`` re-reads the body. Whatever a sender posts (the platform
accepts up to 16 MiB), no body over this enters workflow history."""
REF_MESSAGE_BYTES = 16 * 1024
"""The parts-less message of a reference is carried without its ``metadata`` when larger than this (the backend
still sees the metadata: ``dispatch`` re-reads the whole message); a reference whose ids alone are larger is
``malformed``."""
TEXT_COPY_BYTES = 64 * 1024
"""Text over this is carried once, in ``message.parts``, and not copied into ``PolledRow.text`` as well."""
MAX_QUOTED_CHARS = 200
"""A row's ``method`` and the reasons quoting it are cut to this many characters: the sender chooses the method,
and a huge one must not grow a poll result past Temporal's payload limit."""


class InboxFormatError(ValueError):
    """The inbox answer is not a JSON array at all (a proxy's HTML page, a truncated answer): a transient failure."""


@dataclass(frozen=True)
class InboxRow:
    """One row of an inbox answer, as far as it could be decoded.

    Attributes:
        fields: The row's JSON object; a field that could not be decoded is absent.
        problem: Why a field could not be decoded (one line), or ``None`` when the whole row decoded.
    """

    fields: dict[str, Any]
    problem: str | None = None


def parse_time(value: Any) -> datetime | None:
    """Parse the platform's ISO-8601 ``created_at`` (``Z`` suffix accepted); ``None`` when absent or bad."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def is_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID, the only cursor shape the platform accepts (docs/protocol.md §3.3)."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def clipped(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- decoding ----------------------------------------------------------------------------------------------------


def decode_inbox(content: bytes) -> list[InboxRow]:
    """Decode an inbox answer (a JSON array of rows), row by row when the whole array cannot be decoded.

    Args:
        content: The response body of ``GET /workspaces/{id}/activity``.

    Returns:
        The rows in the answer's order; rows that are not JSON objects, or whose ``id`` is missing or unreadable,
        are left out (nothing could settle them).

    Raises:
        InboxFormatError: The answer is not a JSON array.
    """
    try:
        data = orjson.loads(content or b"[]")
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, list):
        return [InboxRow(row) for row in data if isinstance(row, dict) and row.get("id")]
    if data is not None:
        raise InboxFormatError("inbox answer is not a JSON array")
    spans = _split(content, ord("["), ord("]"))
    if spans is None:
        raise InboxFormatError("inbox answer is not a JSON array")
    rows = []
    for start, end in spans:
        row = _decode_row(content[start:end])
        if row is not None and row.fields.get("id"):
            rows.append(row)
    return rows


def _decode_row(raw: bytes) -> InboxRow | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:
        return InboxRow(value) if isinstance(value, dict) else None
    members = _split(raw, ord("{"), ord("}"))
    if members is None:
        return None
    fields: dict[str, Any] = {}
    problems: list[str] = []
    for start, end in members:
        key, value_span = _member(raw, start, end)
        if key is None:
            continue
        try:
            fields[key] = orjson.loads(raw[value_span[0] : value_span[1]])
        except orjson.JSONDecodeError as err:
            problems.append(f"{clipped(key, 40)} cannot be decoded ({clipped(str(err), 80)})")
    if "id" in fields and not isinstance(fields["id"], str | int):
        return None
    return InboxRow(fields, "; ".join(problems) or "row cannot be decoded")


def _member(raw: bytes, start: int, end: int) -> tuple[str | None, tuple[int, int]]:
    """Split one ``"key": value`` member of an object into its decoded key and the span of its raw value."""
    index = _skip_space(raw, start, end)
    if index >= end or raw[index] != ord('"'):
        return None, (end, end)
    key_end = _string_end(raw, index, end)
    try:
        key = orjson.loads(raw[index:key_end])
    except orjson.JSONDecodeError:
        return None, (end, end)
    colon = _skip_space(raw, key_end, end)
    if colon >= end or raw[colon] != ord(":"):
        return None, (end, end)
    return (key if isinstance(key, str) else None), (colon + 1, end)


def _split(raw: bytes, open_: int, close: int) -> list[tuple[int, int]] | None:
    """Spans of the top-level elements of a JSON array (or members of an object) in ``raw``, without decoding them.

    A scanner that only follows brackets and strings, so it works at any nesting depth and on any string content.
    Returns ``None`` when ``raw`` is not one ``open_ ... close`` value.
    """
    end = len(raw)
    index = _skip_space(raw, 0, end)
    if index >= end or raw[index] != open_:
        return None
    spans: list[tuple[int, int]] = []
    depth = 0
    start = index + 1
    for token_start, token in _tokens(raw, index, end):
        if token in (ord("["), ord("{")):
            depth += 1
        elif token in (ord("]"), ord("}")):
            depth -= 1
            if depth == 0:
                if raw[start:token_start].strip():
                    spans.append((start, token_start))
                return spans if token == close and not raw[token_start + 1 :].strip() else None
        elif token == ord(",") and depth == 1:
            spans.append((start, token_start))
            start = token_start + 1
    return None


def _tokens(raw: bytes, index: int, end: int) -> Iterator[tuple[int, int]]:
    """Yield ``(position, byte)`` of every bracket and comma outside strings, from ``index`` on."""
    while index < end:
        byte = raw[index]
        if byte == ord('"'):
            index = _string_end(raw, index, end)
            continue
        if byte in (ord("["), ord("]"), ord("{"), ord("}"), ord(",")):
            yield index, byte
        index += 1


def _string_end(raw: bytes, index: int, end: int) -> int:
    """The position just after the JSON string starting at ``index`` (an opening quote)."""
    index += 1
    while index < end:
        byte = raw[index]
        if byte == ord("\\"):
            index += 2
            continue
        if byte == ord('"'):
            return index + 1
        index += 1
    return end


def _skip_space(raw: bytes, index: int, end: int) -> int:
    while index < end and raw[index] in b" \t\r\n":
        index += 1
    return index


# --- rows --------------------------------------------------------------------------------------------------------


def row_to_polled(row: dict[str, Any], *, read_after: str | None = None, problem: str | None = None) -> PolledRow:
    """Apply the skip rules of docs/protocol.md §4 and parse one inbox row.

    Args:
        row: One element of ``GET /workspaces/{id}/activity`` (JSON object).
        read_after: Id of the inbox row just before this one, or ``None`` when unknown; kept in ``body_ref`` when the
            body is passed by reference, so ``dispatch`` can re-read it with ``since_id`` (see ``BodyRef``).
        problem: Why part of the row could not be decoded (:class:`InboxRow`); such a row is ``malformed``
            unless a skip rule settles it first.

    Returns:
        A ``PolledRow`` whose ``outcome`` is ``deliver`` (with message and text; a body over :data:`BODY_REF_BYTES`
        as a reference: ``body_ref`` set, message without parts, no text), ``skip`` (notify echo, error row, already
        answered by push, unknown method, no content, an id that is not a UUID) or ``malformed`` (a body that cannot
        be decoded or parsed, or a reference whose message ids alone are over :data:`REF_MESSAGE_BYTES`).
    """
    row_id = str(row.get("id"))
    method = row.get("method")
    common: dict[str, Any] = {
        "row_id": row_id,
        "created_at": parse_time(row.get("created_at")),
        "source_id": row.get("source_id") if isinstance(row.get("source_id"), str) else None,
        "method": clipped(method) if isinstance(method, str) else None,
    }
    body = row.get("request_body")
    body_bytes = len(orjson.dumps(body)) if body is not None else 0
    common["body_bytes"] = body_bytes

    def skip(reason: str) -> PolledRow:
        return PolledRow(**common, outcome="skip", reason=clipped(reason))

    if not is_uuid(row_id):
        return skip(f"row id {clipped(row_id, 60)!r} is not a UUID: unreadable, and never a cursor")
    if row.get("activity_type", INBOX_TYPE) != INBOX_TYPE:
        return skip(f"activity_type {row.get('activity_type')!r} is not {INBOX_TYPE}")
    if method == "notify":
        return skip("own canvas reply (notify echo)")
    if row.get("status") == "error":
        return skip("row status is error")
    if row.get("response_body") is not None:
        return skip("already answered (push delivery)")
    if method not in DISPATCHED_METHODS:
        return skip(f"unknown method {method!r}")
    if problem is not None:
        return PolledRow(**common, outcome="malformed", reason=clipped(f"unreadable row: {problem}"))
    if body is None:
        return skip("no request_body")
    try:
        parsed = parse_inbound(body)
    except MalformedMessageError as err:
        return PolledRow(**common, outcome="malformed", reason=err.reason)
    depth = (parsed.message.metadata or {}).get("auto_reply_depth", 0)
    deliver: dict[str, Any] = {
        "outcome": "deliver",
        "unsupported_parts": parsed.unsupported_parts,
        "auto_reply_depth": depth if isinstance(depth, int) and depth >= 0 else 0,
    }
    if body_bytes <= BODY_REF_BYTES:
        text = "" if len(parsed.text.encode()) > TEXT_COPY_BYTES else parsed.text
        return PolledRow(**common, **deliver, message=parsed.message, text=text)
    message = parsed.message.model_copy(update={"parts": []})
    carried = len(message.model_dump_json(by_alias=True))
    if carried > REF_MESSAGE_BYTES:
        message = message.model_copy(update={"metadata": None})
        carried = len(message.model_dump_json(by_alias=True))
    if carried > REF_MESSAGE_BYTES:
        return PolledRow(
            **common,
            outcome="malformed",
            reason=f"message ids too large: {carried} bytes without parts and metadata (at most {REF_MESSAGE_BYTES})",
        )
    return PolledRow(
        **{**common, "body_bytes": carried},
        **deliver,
        message=message,
        body_ref=BodyRef(read_after=read_after, body_bytes=body_bytes),
    )


def rows_to_polled(
    rows: list[InboxRow], *, read_after: str | None, not_before: datetime | None = None
) -> list[PolledRow]:
    """Parse a batch read from the inbox, giving each row its predecessor for ``BodyRef.read_after``.

    The predecessor of the first row is ``read_after``; of each other row, the row before it in ``rows`` (every
    ``a2a_receive`` row the platform returned, including rows then skipped or left out by ``not_before``). Only
    UUID ids can be predecessors: the platform cannot read after any other.

    Args:
        rows: Inbox rows oldest first (an ASC read, or a DESC read already reversed).
        read_after: The row before ``rows[0]``: the ``since_id`` cursor of an ASC read; ``None`` for a newest-first
            read without a cursor, whose oldest row has no known predecessor.
        not_before: Only rows created at or after this are returned (rows without a ``created_at`` are kept).

    Returns:
        The parsed rows, oldest first.
    """
    polled = []
    for row in rows:
        created_at = parse_time(row.fields.get("created_at"))
        if not_before is None or created_at is None or created_at >= not_before:
            polled.append(row_to_polled(row.fields, read_after=read_after, problem=row.problem))
        row_id = str(row.fields["id"])
        if is_uuid(row_id):
            read_after = row_id
    return polled
