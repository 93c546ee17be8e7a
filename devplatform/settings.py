"""Settings of one devplatform instance (docs/protocol.md §6 gives the production values used as defaults)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

MAX_BODY_BYTES = 16 * 1024 * 1024
"""The platform's request body cap (docs/protocol.md §6): 16 MiB."""


class PlatformSettings(BaseModel):
    """How a devplatform behaves; every timing default is the production value from docs/protocol.md §6.

    Frozen: an app reads its settings once in :func:`devplatform.app.create_app`, so a changed copy needs a
    new app.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    db_path: Path
    """SQLite file holding workspaces and activity rows; created (with its WAL files) when missing."""
    admin_token: str = "dev-admin"
    """Bearer of the ``/admin`` endpoints, and of canvas (human) messages sent to
    ``POST /workspaces/{id}/a2a``."""
    stale_after_s: float = Field(default=90.0, gt=0)
    """An external workspace whose last heartbeat is older than this goes back to ``awaiting_agent``."""
    sweep_every_s: float = Field(default=15.0, gt=0)
    """Period of the stale sweep started by the app's lifespan."""
    rate_limit_per_min: int = Field(default=600, ge=0)
    """Requests per client IP in any 60 s window before ``429``; ``0`` disables the limit. ``/admin`` is
    exempt."""
    require_tenant_headers: bool = False
    """Behave like a hosted platform: ``/workspaces/*`` answers ``404`` with an empty body unless the request
    carries ``Origin`` or ``X-Molecule-Org-Id`` (docs/protocol.md §2)."""
    public_url: str | None = None
    """Base URL the platform is reached at. When set (and tenant headers are required), an ``Origin`` header
    counts only if it equals this URL; when unset, any ``Origin`` counts."""
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, gt=0)
    """Largest ``POST /workspaces/{id}/a2a`` body accepted before ``413``."""
