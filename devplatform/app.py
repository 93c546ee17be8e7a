"""The devplatform app: :func:`create_app` wires settings, state, routers and middleware.

Nothing lives at module level: every app owns its database, fault list and rate limiter, so tests can run many
apps side by side. The database is opened by the lifespan, which also runs the stale sweep; an app driven
through ``httpx.ASGITransport`` (which sends no lifespan events) must be entered with
``app.router.lifespan_context(app)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from devplatform.db import Database
from devplatform.faults import FaultInjector, FaultMiddleware
from devplatform.ratelimit import RateLimiter, RateLimitMiddleware
from devplatform.responses import ApiError, OrjsonResponse, api_error_handler
from devplatform.routes import admin, registry, workspaces
from devplatform.settings import PlatformSettings
from devplatform.sweeper import run_stale_sweep


async def _http_error_handler(_request: Request, exc: Exception) -> Response:
    """Render Starlette's own errors (unknown route, wrong method) as ``{"error": ...}`` (docs/protocol.md §2)."""
    assert isinstance(exc, StarletteHTTPException)
    return ApiError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})).to_response()


def create_app(settings: PlatformSettings, *, clock: Callable[[], datetime] | None = None) -> FastAPI:
    """Build a devplatform app.

    Middleware, outermost first: fault injection, then the rate limit; both skip ``/admin``. The database file
    (and its parent directory) is created on startup when missing, and closed on shutdown.

    Args:
        settings: Database path, tokens, timings and switches.
        clock: Source of "now" (UTC) for timestamps, ``since_secs`` and the stale window; tests inject a fake
            one to move time without waiting. Default: the wall clock.

    Returns:
        The app; ``app.state`` holds ``settings``, ``faults``, ``limiter`` and, while running, ``db``.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.db_path.parent.mkdir(parents=True, exist_ok=True)
        db = Database(settings.db_path, clock=clock)
        app.state.db = db
        sweeper = asyncio.create_task(run_stale_sweep(db, settings), name="devplatform-stale-sweep")
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            db.close()

    app = FastAPI(
        title="Molecule devplatform",
        summary="A local Molecule platform for poll-mode connectors (docs/protocol.md §3–6).",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.settings = settings
    app.state.faults = FaultInjector()
    app.state.limiter = RateLimiter(settings.rate_limit_per_min)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.include_router(registry.router)
    app.include_router(workspaces.router)
    app.include_router(admin.router)
    app.add_middleware(RateLimitMiddleware, limiter=app.state.limiter)
    app.add_middleware(FaultMiddleware, faults=app.state.faults)
    return app
