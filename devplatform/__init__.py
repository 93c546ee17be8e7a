"""A local Molecule platform (FastAPI + uvicorn + a SQLite file) for testing poll-mode connectors.

Modules:

- ``settings``: :class:`~devplatform.settings.PlatformSettings` (database, admin token, timings, switches).
- ``app``: ``create_app(settings) -> FastAPI``; the lifespan opens the database and runs the stale sweep.
- ``db``: schema and every SQL statement (:class:`~devplatform.db.Database`).
- ``records``: what is stored: workspace and activity-row records, inbox queries, allowed activity types.
- ``deps``: ``Annotated`` dependencies: workspace bearer auth, admin auth, the tenant rule, JSON bodies.
- ``routes/``: ``registry`` (register, heartbeat), ``workspaces`` (status, inbox, a2a, notify), ``admin``.
- ``sweeper``: the stale sweep (external workspaces silent for ``stale_after_s`` → ``awaiting_agent``).
- ``ratelimit``: per-client-IP sliding window → ``429`` + ``Retry-After``.
- ``faults``: injected failures and latency for the next N matching requests.
- ``responses``: orjson responses and :class:`~devplatform.responses.ApiError`.
- ``server``: ``serve(settings, host, port)`` (blocking) and :class:`~devplatform.server.RunningPlatform`
  (background thread on loopback, free port).
- ``client``: :class:`~devplatform.client.PlatformAdmin` (sync) and
  :class:`~devplatform.client.AsyncPlatformAdmin` (async), same methods.
- ``calls``: the clients' requests, built once for both, and the values they return.

Contract: docs/protocol.md §3–6, reproduced as the platform does it, not as clients wish it were:

- register/heartbeat upsert liveness; a removed workspace is never resurrected; heartbeats move
  ``online``/``degraded`` by ``error_rate`` and ``runtime_state``; ``stale_after_s`` of silence →
  ``awaiting_agent``;
- the inbox pages ``created_at ASC, seq ASC`` after a cursor and newest first without one; an unknown, pruned
  or foreign cursor is ``410``, a non-UUID cursor ``500``;
- ``POST /workspaces/{id}/a2a`` normalizes with :func:`activities.a2a.normalize_request` and, for a poll
  target, stores one ``a2a_receive`` row per ``messageId``; notify writes an echo row into the sender's own
  inbox;
- workspace bearers act only on their own workspace (``401``/``403``); ``/workspaces/*`` may require tenant
  headers (``404``, empty body); requests over ``rate_limit_per_min`` get ``429``.

Beyond the protocol, ``/admin`` (admin token) creates workspaces, rotates tokens, removes workspaces, lists
rows, inserts hostile rows (a ``request_body`` stored as raw JSON text and served verbatim, any row id),
prunes, sweeps and injects faults; it is neither rate limited nor faulted. Push delivery is not
implemented.
"""
