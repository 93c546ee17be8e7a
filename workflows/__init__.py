"""The connector's workflow: one durable ``ConnectWorkflow`` per workspace (docs/architecture.md §2).

Modules:

- ``connect``: :class:`~workflows.connect.ConnectWorkflow`: register, heartbeat duty, long-poll loop, lanes,
  dead letters, continue-as-new, and the control plane (``status`` query; ``pause``, ``resume``, ``drain``,
  ``set_cursor``, ``redrive``, ``discard``, ``configure`` updates and signals).
- ``state``: :class:`~workflows.state.ConnectState`: fetch and commit cursors, pending messages by lane, dedupe
  windows, dead letters, counters; pure pydantic, no temporalio import, carried whole through continue-as-new.
- ``messages``: ``ConnectInput`` (startable from plain JSON), ``ConnectSettings`` and the handlers' input and
  result models.

Robustness contract:

- One connector per workspace: workflow id ``connect-<workspace_id>``, started with ``USE_EXISTING``.
- Heartbeat and inbox poll are separate duties; a transient platform failure is retried with backoff, and an auth
  or gone answer pauses only the duty that met it, which tries again later (docs/protocol.md §2). Nothing is fatal.
- The commit cursor moves only over settled rows (replied, skipped, dead-lettered, duplicate); a dedupe window of
  row ids and messageIds makes a 410 re-read or a rewind deliver nothing twice (docs/protocol.md §8).
- A message that keeps failing is retried, then dead-lettered and its sender told; it never stops the poll or the
  other conversations.
- Workflow code is deterministic and does no I/O; any change to its commands goes behind ``workflow.patched`` and
  the histories in ``tests/histories`` must still replay. No token ever enters its input, state or history.
"""
