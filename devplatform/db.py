"""The devplatform's SQLite file: schema and every SQL statement (docs/protocol.md §1, §3–4, §6).

One :class:`Database` owns one ``sqlite3`` connection in WAL mode, shared by all requests under a lock; each
method is one short transaction, so the functions can be unit-tested without FastAPI. Records come back as
the frozen dataclasses of :mod:`devplatform.records`.

A row's ``request_body`` is stored as orjson's encoding and decoded on read, except for the admin's hostile
rows (:meth:`Database.insert_raw_row`, flagged ``raw_request_body``): their text is handed out unparsed as a
:class:`~devplatform.records.RawJson`, which the inbox serves verbatim (a body deeper than orjson can parse,
a lone surrogate escape) while every other row takes the same path as before.

Timestamps are stored as ISO-8601 UTC strings with microseconds and ``Z`` (``2026-04-30T05:00:00.123456Z``),
which sort lexically. Row ``created_at`` never goes backwards, even if the wall clock does, so the inbox order
``created_at ASC, seq ASC`` is also the insertion order.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from devplatform.records import ActivityRow, InboxQuery, NewRow, RawJson, WorkspaceRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workspaces (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    runtime           TEXT NOT NULL DEFAULT 'external',
    delivery_mode     TEXT,
    url               TEXT,
    status            TEXT NOT NULL DEFAULT 'awaiting_agent',
    token_hash        TEXT,
    agent_card        TEXT,
    last_heartbeat_at TEXT,
    active_tasks      INTEGER,
    current_task      TEXT,
    uptime_seconds    INTEGER,
    error_rate        REAL,
    runtime_state     TEXT,
    created_at        TEXT NOT NULL,
    removed_at        TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS workspaces_token_hash ON workspaces (token_hash);
CREATE TABLE IF NOT EXISTS activity_rows (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id),
    activity_type TEXT NOT NULL,
    source_id     TEXT,
    target_id     TEXT,
    method        TEXT,
    summary       TEXT,
    status        TEXT NOT NULL DEFAULT 'ok',
    message_id    TEXT,
    duplicates    INTEGER NOT NULL DEFAULT 0,
    request_body  TEXT,
    response_body TEXT,
    created_at    TEXT NOT NULL,
    raw_request_body INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS activity_rows_inbox ON activity_rows (workspace_id, created_at, seq);
CREATE UNIQUE INDEX IF NOT EXISTS activity_rows_message_id
    ON activity_rows (workspace_id, message_id) WHERE message_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS liveness_log (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT NOT NULL,
    event        TEXT NOT NULL,
    status       TEXT NOT NULL,
    at           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS liveness_log_workspace ON liveness_log (workspace_id, seq);
"""

_WORKSPACE_COLUMNS = (
    "id, name, runtime, delivery_mode, url, status, token_hash, agent_card, last_heartbeat_at, active_tasks, "
    "current_task, uptime_seconds, error_rate, runtime_state, created_at, removed_at"
)
_ROW_COLUMNS = (
    "id, seq, workspace_id, activity_type, source_id, target_id, method, summary, status, message_id, "
    "duplicates, request_body, response_body, created_at, raw_request_body"
)
_ADDED_ROW_COLUMNS = {"raw_request_body": "INTEGER NOT NULL DEFAULT 0"}
"""Columns added after the first schema, with their definitions: older database files get them on open."""


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with microseconds and ``Z``, the platform's ``created_at`` format (docs/protocol.md §4)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def hash_token(token: str) -> str:
    """The stored form of a bearer token: hex SHA-256 (tokens are never stored in clear)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _dump(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _load(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _log_liveness(conn: sqlite3.Connection, workspace_id: str, event: str, status: str, at: str) -> None:
    """Append to the liveness log (admin view ``GET /admin/workspaces/{id}/liveness``), in the caller's transaction."""
    conn.execute(
        "INSERT INTO liveness_log (workspace_id, event, status, at) VALUES (?, ?, ?, ?)",
        (workspace_id, event, status, at),
    )


def _workspace_from(row: sqlite3.Row) -> WorkspaceRecord:
    values = dict(row)
    values["agent_card"] = _load(values["agent_card"])
    return WorkspaceRecord(**values)


def _row_from(row: sqlite3.Row) -> ActivityRow:
    # Positional, in _ROW_COLUMNS order (no dict per row): this runs once per inbox row served.
    (row_id, seq, workspace_id, activity_type, source_id, target_id, method, summary, status, message_id,
     duplicates, request_body, response_body, created_at, raw_request_body) = row  # fmt: skip
    return ActivityRow(
        row_id, seq, workspace_id, activity_type, source_id, target_id, method, summary, status, message_id,
        duplicates, RawJson(request_body) if raw_request_body else _load(request_body), _load(response_body),
        created_at,
    )  # fmt: skip


class Database:
    """The platform's SQLite file, safe to share between threads and requests.

    Args:
        path: Database file; parent directories must exist. Created with the schema when missing.
        clock: Source of "now" (UTC). Tests may inject a fake; the default is the wall clock.
    """

    def __init__(self, path: Path, *, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=5000")
        with self._conn:
            self._conn.executescript(_SCHEMA)
            present = {row["name"] for row in self._conn.execute("PRAGMA table_info(activity_rows)")}
            for column, definition in _ADDED_ROW_COLUMNS.items():
                if column not in present:
                    self._conn.execute(f"ALTER TABLE activity_rows ADD COLUMN {column} {definition}")
        last = self._conn.execute("SELECT MAX(created_at) FROM activity_rows").fetchone()[0]
        self._last_created_at: str = last or ""

    def close(self) -> None:
        """Close the connection; the object is unusable afterwards."""
        with self._lock:
            self._conn.close()

    def now(self) -> datetime:
        """The database clock's current time (UTC)."""
        return self._clock()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._conn:
            yield self._conn

    # Workspaces

    def create_workspace(
        self,
        name: str,
        token_hash: str | None,
        *,
        runtime: str = "external",
        delivery_mode: str | None = "poll",
    ) -> WorkspaceRecord:
        """Insert a workspace in status ``awaiting_agent`` (docs/protocol.md §1.1).

        Args:
            name: Display name.
            token_hash: :func:`hash_token` of its bearer, or ``None`` to let the first register bootstrap one.
            runtime: ``external`` for connector workspaces.
            delivery_mode: Stored delivery mode.

        Returns:
            The new record.
        """
        workspace_id = str(uuid.uuid4())
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO workspaces (id, name, runtime, delivery_mode, status, token_hash, created_at) "
                "VALUES (?, ?, ?, ?, 'awaiting_agent', ?, ?)",
                (workspace_id, name, runtime, delivery_mode, token_hash, format_timestamp(self.now())),
            )
        record = self.get_workspace(workspace_id)
        assert record is not None
        return record

    def get_workspace(self, workspace_id: str) -> WorkspaceRecord | None:
        """The workspace with this id (removed ones included), or ``None``."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_WORKSPACE_COLUMNS} FROM workspaces WHERE id = ?", (workspace_id,)
            ).fetchone()
        return None if row is None else _workspace_from(row)

    def workspace_by_token_hash(self, token_hash: str) -> WorkspaceRecord | None:
        """The workspace whose live token hashes to ``token_hash``, or ``None``."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_WORKSPACE_COLUMNS} FROM workspaces WHERE token_hash = ?", (token_hash,)
            ).fetchone()
        return None if row is None else _workspace_from(row)

    def set_token_hash(self, workspace_id: str, token_hash: str) -> bool:
        """Replace a workspace's token (rotation); the old token stops working at once.

        Returns:
            Whether the workspace exists.
        """
        with self._transaction() as conn:
            cursor = conn.execute("UPDATE workspaces SET token_hash = ? WHERE id = ?", (token_hash, workspace_id))
        return cursor.rowcount == 1

    def remove_workspace(self, workspace_id: str) -> WorkspaceRecord | None:
        """Mark a workspace ``removed`` (idempotent; the first ``removed_at`` is kept).

        Returns:
            The updated record, or ``None`` when unknown.
        """
        with self._transaction() as conn:
            conn.execute(
                "UPDATE workspaces SET status = 'removed', removed_at = COALESCE(removed_at, ?) WHERE id = ?",
                (format_timestamp(self.now()), workspace_id),
            )
        return self.get_workspace(workspace_id)

    def register(
        self,
        workspace_id: str,
        *,
        delivery_mode: str,
        url: str | None,
        agent_card: dict[str, Any],
        token_hash: str | None = None,
    ) -> WorkspaceRecord:
        """Upsert registration: ``status=online``, ``last_heartbeat_at=now`` (docs/protocol.md §3.1).

        The caller has checked that the workspace exists and is not removed.

        Args:
            workspace_id: Workspace id.
            delivery_mode: Effective delivery mode to store.
            url: Agent URL (push only).
            agent_card: The posted card.
            token_hash: A bootstrap token to install; ``None`` keeps the current one.

        Returns:
            The updated record.
        """
        now = format_timestamp(self.now())
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE workspaces SET status = 'online', last_heartbeat_at = ?, delivery_mode = ?, url = ?, "
                "agent_card = ?, token_hash = COALESCE(?, token_hash) WHERE id = ? AND removed_at IS NULL",
                (now, delivery_mode, url, _dump(agent_card), token_hash, workspace_id),
            )
            if cursor.rowcount:
                _log_liveness(conn, workspace_id, "register", "online", now)
        record = self.get_workspace(workspace_id)
        assert record is not None
        return record

    def heartbeat(
        self,
        workspace_id: str,
        *,
        next_status: Callable[[str], str],
        active_tasks: int | None,
        current_task: str | None,
        uptime_seconds: int | None,
        error_rate: float | None,
        runtime_state: str | None,
    ) -> WorkspaceRecord | None:
        """Record a heartbeat and move the status, atomically (docs/protocol.md §3.2).

        Args:
            workspace_id: Workspace id.
            next_status: Maps the current status to the new one (the §3.2 rules live with the route).
            active_tasks: Reported value.
            current_task: Reported value.
            uptime_seconds: Reported value.
            error_rate: Reported value.
            runtime_state: Reported value.

        Returns:
            The updated record, or ``None`` when the workspace is unknown or removed.
        """
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT status FROM workspaces WHERE id = ? AND removed_at IS NULL", (workspace_id,)
            ).fetchone()
            if row is None:
                return None
            status, now = next_status(row["status"]), format_timestamp(self.now())
            conn.execute(
                "UPDATE workspaces SET status = ?, last_heartbeat_at = ?, active_tasks = ?, "
                "current_task = ?, uptime_seconds = ?, error_rate = ?, runtime_state = ? WHERE id = ?",
                (status, now, active_tasks, current_task, uptime_seconds, error_rate, runtime_state, workspace_id),
            )
            _log_liveness(conn, workspace_id, "heartbeat", status, now)
        return self.get_workspace(workspace_id)

    def sweep_stale(self, stale_before: datetime) -> list[str]:
        """Send silent external workspaces back to ``awaiting_agent`` (docs/protocol.md §1.6).

        Args:
            stale_before: Workspaces whose last heartbeat is older than this moment are stale.

        Returns:
            Ids of the workspaces that changed.
        """
        cutoff = format_timestamp(stale_before)
        with self._transaction() as conn:
            rows = conn.execute(
                "UPDATE workspaces SET status = 'awaiting_agent' WHERE runtime = 'external' "
                "AND status IN ('online', 'degraded') AND removed_at IS NULL "
                "AND (last_heartbeat_at IS NULL OR last_heartbeat_at < ?) RETURNING id",
                (cutoff,),
            ).fetchall()
            now = format_timestamp(self.now())
            for row in rows:
                _log_liveness(conn, row["id"], "stale", "awaiting_agent", now)
        return [row["id"] for row in rows]

    def liveness(self, workspace_id: str) -> list[dict[str, str]]:
        """A workspace's liveness log, oldest first: every accepted register and heartbeat, every stale sweep.

        Returns:
            ``[{"event": "register" | "heartbeat" | "stale", "status": <status after it>, "at": <ISO-8601>}]``.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT event, status, at FROM liveness_log WHERE workspace_id = ? ORDER BY seq", (workspace_id,)
            ).fetchall()
        return [dict(row) for row in rows]

    # Activity rows

    def _next_created_at(self) -> str:
        """Now, but never earlier than the newest row (call under the lock)."""
        stamp = max(format_timestamp(self.now()), self._last_created_at)
        self._last_created_at = stamp
        return stamp

    def insert_row(self, new: NewRow) -> tuple[ActivityRow, bool]:
        """Insert an activity row, unless its ``message_id`` is already in that inbox (docs/protocol.md §3.4).

        Args:
            new: The row; a non-null ``message_id`` makes the insert idempotent per ``workspace_id``.

        Returns:
            ``(row, created)``: the stored row, and ``False`` when an earlier row with the same ``message_id``
            was returned instead of inserting.
        """
        with self._transaction() as conn:
            if new.message_id is not None:
                existing = conn.execute(
                    f"SELECT {_ROW_COLUMNS} FROM activity_rows WHERE workspace_id = ? AND message_id = ?",
                    (new.workspace_id, new.message_id),
                ).fetchone()
                if existing is not None:
                    conn.execute(
                        "UPDATE activity_rows SET duplicates = duplicates + 1 WHERE seq = ?",
                        (existing["seq"],),
                    )
                    return _row_from(existing), False
            row = conn.execute(
                "INSERT INTO activity_rows (id, workspace_id, activity_type, source_id, target_id, method, "
                "summary, status, message_id, request_body, response_body, created_at) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_ROW_COLUMNS}",
                (
                    str(uuid.uuid4()),
                    new.workspace_id,
                    new.activity_type,
                    new.source_id,
                    new.target_id,
                    new.method,
                    new.summary,
                    new.status,
                    new.message_id,
                    _dump(new.request_body),
                    _dump(new.response_body),
                    self._next_created_at(),
                ),
            ).fetchall()[0]
        return _row_from(row), True

    def insert_raw_row(
        self,
        new: NewRow,
        request_body_json: str,
        *,
        row_id: str | None = None,
        created_at: datetime | None = None,
    ) -> ActivityRow | None:
        r"""Insert a hostile row a real platform could return but the a2a route refuses (admin use only).

        ``request_body_json`` is stored as given, unchecked, and served verbatim by the inbox: a body nested
        deeper than parsers allow, a lone surrogate escape (``"\ud800"``), even text that is not JSON (which
        makes the whole inbox answer invalid, as a broken platform would). No ``message_id`` deduplication.

        Args:
            new: The other columns; ``new.request_body`` and ``new.message_id`` are ignored.
            request_body_json: Raw JSON text of ``request_body``.
            row_id: The row id, any string (e.g. ``"row-7"``, not a UUID); a fresh UUID when ``None``.
            created_at: The row's time; now when ``None``. A later time also holds back every later row
                (``created_at`` never goes backwards); an earlier one places the row among older rows.

        Returns:
            The stored row (its ``request_body`` a :class:`~devplatform.records.RawJson`), or ``None`` when
            ``row_id`` is already taken in any workspace (or the workspace does not exist).
        """
        with self._transaction() as conn:
            if created_at is None:
                stamp = self._next_created_at()
            else:
                stamp = format_timestamp(created_at)
                self._last_created_at = max(stamp, self._last_created_at)
            try:
                row = conn.execute(
                    "INSERT INTO activity_rows (id, workspace_id, activity_type, source_id, target_id, method, "
                    "summary, status, request_body, raw_request_body, created_at) "
                    f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?) RETURNING {_ROW_COLUMNS}",
                    (
                        row_id or str(uuid.uuid4()),
                        new.workspace_id,
                        new.activity_type,
                        new.source_id,
                        new.target_id,
                        new.method,
                        new.summary,
                        new.status,
                        request_body_json,
                        stamp,
                    ),
                ).fetchall()[0]
            except sqlite3.IntegrityError:
                return None
        return _row_from(row)

    def get_row(self, workspace_id: str, row_id: str) -> ActivityRow | None:
        """The row with this id in this workspace's inbox, or ``None`` (never another workspace's row)."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_ROW_COLUMNS} FROM activity_rows WHERE id = ? AND workspace_id = ?",
                (row_id, workspace_id),
            ).fetchone()
        return None if row is None else _row_from(row)

    def find_row(self, row_id: str) -> ActivityRow | None:
        """The row with this id in any workspace, or ``None`` (admin use only)."""
        with self._lock:
            row = self._conn.execute(f"SELECT {_ROW_COLUMNS} FROM activity_rows WHERE id = ?", (row_id,)).fetchone()
        return None if row is None else _row_from(row)

    def list_rows(self, workspace_id: str, query: InboxQuery) -> list[ActivityRow]:
        """The inbox page for ``query`` (docs/protocol.md §3.3).

        With a cursor (``query.after``): rows strictly after it by ``(created_at, seq)``, oldest first.
        Without: the newest rows, newest first.

        Args:
            workspace_id: Whose inbox.
            query: Filters, limit and cursor.

        Returns:
            At most ``query.limit`` rows.
        """
        clauses = ["workspace_id = ?"]
        params: list[Any] = [workspace_id]
        if query.activity_type is not None:
            clauses.append("activity_type = ?")
            params.append(query.activity_type)
        if query.source == "canvas":
            clauses.append("source_id IS NULL")
        elif query.source == "agent":
            clauses.append("source_id IS NOT NULL")
        if query.since is not None:
            clauses.append("created_at >= ?")
            params.append(format_timestamp(query.since))
        if query.after is not None:
            clauses.append("(created_at > ? OR (created_at = ? AND seq > ?))")
            params += [query.after.created_at, query.after.created_at, query.after.seq]
            order = "created_at ASC, seq ASC"
        else:
            order = "created_at DESC, seq DESC"
        params.append(query.limit)
        sql = f"SELECT {_ROW_COLUMNS} FROM activity_rows WHERE {' AND '.join(clauses)} ORDER BY {order} LIMIT ?"
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [_row_from(row) for row in rows]

    def all_rows(self, workspace_id: str) -> list[ActivityRow]:
        """Every row of a workspace's inbox, oldest first (admin and test assertions)."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_ROW_COLUMNS} FROM activity_rows WHERE workspace_id = ? ORDER BY created_at, seq",
                (workspace_id,),
            ).fetchall()
        return [_row_from(row) for row in rows]

    def prune(
        self,
        *,
        workspace_id: str | None = None,
        before: ActivityRow | None = None,
        older_than: datetime | None = None,
    ) -> int:
        """Delete rows, as retention does (docs/protocol.md §6), so that cursors to them answer ``410``.

        Args:
            workspace_id: Only this inbox; ``None`` for all.
            before: Only rows strictly before this row by ``(created_at, seq)``.
            older_than: Only rows with ``created_at`` before this moment.

        Returns:
            How many rows were deleted. With neither ``before`` nor ``older_than``, every row in scope goes.
        """
        clauses = ["1 = 1"]
        params: list[Any] = []
        if workspace_id is not None:
            clauses.append("workspace_id = ?")
            params.append(workspace_id)
        if before is not None:
            clauses.append("(created_at < ? OR (created_at = ? AND seq < ?))")
            params += [before.created_at, before.created_at, before.seq]
        if older_than is not None:
            clauses.append("created_at < ?")
            params.append(format_timestamp(older_than))
        with self._transaction() as conn:
            cursor = conn.execute(f"DELETE FROM activity_rows WHERE {' AND '.join(clauses)}", params)
        return cursor.rowcount
