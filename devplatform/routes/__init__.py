"""The devplatform's routers, one per docs/protocol.md §3 group.

- ``registry``: ``POST /registry/register``, ``POST /registry/heartbeat`` (§3.1–3.2).
- ``workspaces``: ``GET /workspaces/{id}``, ``GET|POST /workspaces/{id}/activity``, ``POST .../a2a``,
  ``POST .../notify`` (§3.3–3.6), behind the tenant rule.
- ``admin``: ``/admin`` workspaces, rows, prune, sweep and faults (test harness; admin token).
"""
