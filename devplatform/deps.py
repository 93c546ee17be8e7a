"""Request dependencies: app state, bearer auth, the tenant rule and JSON bodies (docs/protocol.md §2, §3.4).

Every dependency is ``async def``: none blocks (a SQLite lookup by index takes microseconds, and the handlers call
the database from the event loop anyway), and FastAPI runs a plain ``def`` dependency in its thread pool, a hop per
dependency per request. Under a burst those hops, fighting for the GIL and the database lock, made a reply's
``POST /a2a`` take 30 ms at the median (benchmarks/RESULTS.md).

Auth rules, in one place:

- a **workspace bearer** acts only on its own workspace: unknown or missing token ``401``, another workspace's
  token ``403``; the one exception is ``POST /workspaces/{target}/a2a``, where the bearer names the *sender*;
- the **admin token** (``PlatformSettings.admin_token``) opens ``/admin``, may read any workspace, and sends
  canvas (human) messages when used without ``X-Workspace-ID``;
- a removed workspace's own calls answer ``404`` (docs/protocol.md §2: "404 on own workspace" means gone).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Header, Request
from pydantic import BaseModel, ValidationError

from devplatform.db import Database, hash_token
from devplatform.faults import FaultInjector
from devplatform.records import WorkspaceRecord
from devplatform.responses import ApiError
from devplatform.settings import PlatformSettings

ModelT = TypeVar("ModelT", bound=BaseModel)


async def get_settings(request: Request) -> PlatformSettings:
    """The app's settings."""
    settings: PlatformSettings = request.app.state.settings
    return settings


async def get_db(request: Request) -> Database:
    """The app's database (opened by the lifespan)."""
    db: Database = request.app.state.db
    return db


async def get_faults(request: Request) -> FaultInjector:
    """The app's fault injector."""
    faults: FaultInjector = request.app.state.faults
    return faults


SettingsDep = Annotated[PlatformSettings, Depends(get_settings)]
DbDep = Annotated[Database, Depends(get_db)]
FaultsDep = Annotated[FaultInjector, Depends(get_faults)]


async def bearer_token(authorization: Annotated[str | None, Header()] = None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None`` when absent or empty."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


BearerDep = Annotated[str | None, Depends(bearer_token)]


def is_admin(token: str | None, settings: PlatformSettings) -> bool:
    """Whether ``token`` is the admin token (constant-time comparison)."""
    return token is not None and hmac.compare_digest(token.encode(), settings.admin_token.encode())


async def require_admin(token: BearerDep, settings: SettingsDep) -> None:
    """Guard of the ``/admin`` router.

    Raises:
        ApiError: ``401 {"error":"missing admin token"}`` or ``401 {"error":"invalid admin token"}``.
    """
    if token is None:
        raise ApiError(401, "missing admin token")
    if not is_admin(token, settings):
        raise ApiError(401, "invalid admin token")


def workspace_gone(record: WorkspaceRecord) -> ApiError:
    """The ``404`` a removed workspace gets on its own calls."""
    return ApiError(
        404,
        body={"error": "workspace not found", "hint": f"workspace was removed at {record.removed_at}"},
    )


def authenticate_workspace(db: Database, token: str | None, workspace_id: str) -> WorkspaceRecord:
    """Check that ``token`` is the live bearer of ``workspace_id`` (docs/protocol.md §2).

    Args:
        db: Database.
        token: Bearer token, ``None`` when missing.
        workspace_id: The workspace the call is about.

    Returns:
        The workspace (possibly removed; callers decide what that means).

    Raises:
        ApiError: ``401 missing workspace auth token``, ``401 invalid workspace auth token``, or ``403`` when
            the token belongs to another workspace.
    """
    if token is None:
        raise ApiError(401, "missing workspace auth token")
    record = db.workspace_by_token_hash(hash_token(token))
    if record is None:
        raise ApiError(401, "invalid workspace auth token")
    if record.id != workspace_id:
        raise ApiError(403, "workspace auth token does not grant access to this workspace")
    return record


async def own_workspace(workspace_id: str, token: BearerDep, db: DbDep) -> WorkspaceRecord:
    """The path's workspace, called by its own bearer, and not removed.

    Raises:
        ApiError: ``401``/``403`` as in :func:`authenticate_workspace`; ``404`` when removed.
    """
    record = authenticate_workspace(db, token, workspace_id)
    if record.removed:
        raise workspace_gone(record)
    return record


OwnWorkspaceDep = Annotated[WorkspaceRecord, Depends(own_workspace)]


async def readable_workspace(workspace_id: str, token: BearerDep, db: DbDep, settings: SettingsDep) -> WorkspaceRecord:
    """The path's workspace, read by its own bearer or by the admin token; removed workspaces included.

    Raises:
        ApiError: ``401``/``403`` as in :func:`authenticate_workspace`; ``404`` for an unknown id (admin
            only).
    """
    if is_admin(token, settings):
        record = db.get_workspace(workspace_id)
        if record is None:
            raise ApiError(404, "workspace not found")
        return record
    return authenticate_workspace(db, token, workspace_id)


ReadableWorkspaceDep = Annotated[WorkspaceRecord, Depends(readable_workspace)]


@dataclass(frozen=True, slots=True)
class Sender:
    """Who posts to ``POST /workspaces/{target}/a2a``.

    Attributes:
        workspace: The sending workspace, or ``None`` for the canvas (a human, via the admin token).
    """

    workspace: WorkspaceRecord | None

    @property
    def source_id(self) -> str | None:
        """The ``source_id`` of the stored row."""
        return None if self.workspace is None else self.workspace.id


async def a2a_sender(
    token: BearerDep,
    db: DbDep,
    settings: SettingsDep,
    x_workspace_id: Annotated[str | None, Header()] = None,
) -> Sender:
    """Authenticate the sender of an A2A request (docs/protocol.md §3.4, first step).

    Raises:
        ApiError: ``401`` on a missing or unknown token; ``403`` when ``X-Workspace-ID`` does not match the
            bearer, comes with the admin token, or names a removed sender.
    """
    if is_admin(token, settings):
        if x_workspace_id:
            raise ApiError(403, "X-Workspace-ID cannot be used with the admin token")
        return Sender(workspace=None)
    if token is None:
        raise ApiError(401, "missing workspace auth token")
    record = db.workspace_by_token_hash(hash_token(token))
    if record is None:
        raise ApiError(401, "invalid workspace auth token")
    if x_workspace_id and x_workspace_id != record.id:
        raise ApiError(403, "X-Workspace-ID does not match the bearer token")
    if record.removed:
        raise ApiError(403, "sender workspace was removed")
    return Sender(workspace=record)


SenderDep = Annotated[Sender, Depends(a2a_sender)]


async def require_tenant_headers(request: Request, settings: SettingsDep) -> None:
    """The hosted-platform rule for ``/workspaces/*`` (docs/protocol.md §2), when enabled in settings.

    Raises:
        ApiError: ``404`` with an empty body unless ``X-Molecule-Org-Id`` or an acceptable ``Origin`` is
            present.
    """
    if not settings.require_tenant_headers or request.headers.get("x-molecule-org-id"):
        return
    origin = request.headers.get("origin")
    if origin and (settings.public_url is None or origin.rstrip("/") == settings.public_url.rstrip("/")):
        return
    raise ApiError(404)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw request body, refused beyond ``max_bytes``.

    Raises:
        ApiError: ``413 {"error":"request body too large"}``.
    """
    too_large = ApiError(413, "request body too large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    return bytes(body)


def decode_json(raw: bytes, error: str) -> Any:
    """Decode a JSON body with orjson.

    Raises:
        ApiError: ``400 {"error": error}`` when ``raw`` is not JSON (empty, whitespace, truncated...).
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, error) from None


async def parse_body(request: Request, model: type[ModelT], error: str) -> ModelT:
    """Decode and validate a JSON body into ``model``.

    Raises:
        ApiError: ``400 {"error": error}`` when the body is not JSON or does not validate.
    """
    decoded = decode_json(await request.body(), error)
    try:
        return model.model_validate(decoded)
    except ValidationError:
        raise ApiError(400, error) from None
