"""The connector's activities and the models they exchange with the workflow (docs/architecture.md §2.4).

Modules:

- ``platform``: :class:`~activities.platform.PlatformActivities`: ``register``, ``heartbeat`` (long-running),
  ``poll`` (long-poll, skip rules, cold start, 410 recovery) and ``reply``; the only code that calls the platform.
- ``dispatch``: :class:`~activities.dispatch.DispatchActivities`: the ``dispatch`` activity, which runs a backend
  on one message while heartbeating and sends its reply.
- ``a2a``: A2A v0.3 models, the inbound normalizer, reply building and the deterministic reply ``messageId``.
- ``errors``: the error classes of docs/protocol.md §2 as ``ApplicationError`` types, and the one status classifier.
- ``messages``: input and result models of every activity (what lands in history).
- ``budget``: the per-process request budget per platform and the idle poll backoff.
- ``probe``: the startup capability probe (docs/protocol.md §3.3).
- ``lease``: a worker's liveness lease (``hold_lease``, the session registry) and ``release_sessions``.
- ``shutdown``: sleeping inside an activity until the worker shuts down.
- ``backends/``: what answers a message (``echo``, ``exec``, ``claude-code``, ``http``, plugins).
- ``local_state``: the state directory of this machine (``MOLECULE_CONNECT_STATE_DIR``, else the user's state dir).

Contract:

- Failures are ``ApplicationError`` with a constant ``type``: ``Transient`` is retryable (``Retry-After``
  honoured); ``Auth``, ``Gone``, ``Permanent`` and ``BackendMisconfigured`` are not; ``BackendFailed`` is retried,
  then dead-lettered.
- Retrying is safe: register is an upsert, a peer reply has a deterministic ``messageId`` the platform stores once,
  and a failed reply never re-runs the backend. A canvas ``notify`` has no id and may repeat.
- Tokens are looked up by workspace id for each request and exist only in its headers; no argument, result, error
  or log holds one. Bodies over 256 KiB are passed by reference, never through history.
"""
