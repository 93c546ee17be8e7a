"""The connector's workflow: one durable ``ConnectWorkflow`` per workspace (docs/architecture.md §2).

Modules, in the order a message passes through them:

- ``connect``: :class:`~workflows.connect.ConnectWorkflow`: the delivery loop in ``run`` and the control plane
  (``status``/``dead_letters`` queries; ``pause``, ``resume``, ``drain``, ``set_cursor``, ``redrive``,
  ``discard``, ``configure`` updates, each with a signal twin).
- ``duties``: the one failure policy (transient, gone, blocked), and the register and session duties.
- ``calls``: every activity call by name, with its timeouts and retry policy; reading a failure.
- ``cursor``: :class:`~workflows.cursor.Cursor`, fetch and commit cursors and their transitions (the only writer).
- ``state``: :class:`~workflows.state.ConnectState`: the cursor, pending messages by lane, dedupe windows, dead
  letters (references), the ping-pong counts, counters; pure pydantic, carried through continue-as-new.
- ``lanes``: :class:`~workflows.lanes.LaneSupervisor`, the one owner of the conversation lanes.
- ``delivery``: :class:`~workflows.delivery.Delivery`, one message from its lane to a settled row.
- ``outage``: :class:`~workflows.outage.BackendHealth`, a poison message told from a backend that is down.
- ``context``: :class:`~workflows.context.Connector`, what a run knows, and the phase derived from it.
- ``legacy``: the paths kept for runs started before ``session-and-outages`` (retired with that patch).
- ``messages``: ``ConnectInput`` (startable from plain JSON), ``ConnectSettings`` and the handlers' models.
- ``names``: task queue, workflow id and search attribute names (a leaf, shared with the worker and clients).
- ``lease``: :class:`~workflows.lease.WorkerLeaseWorkflow`, one per ``worker`` process: when the worker dies or
  freezes, its sessions are failed over to live workers within seconds.

Robustness contract:

- One connector per workspace and namespace: workflow id ``connect-<workspace_id>``, started with ``USE_EXISTING``.
- One ``session`` activity per workspace heartbeats the platform and reads the inbox; it moves to another worker
  within seconds of its worker dying when the worker held a lease (``lease``), else within ``failover_timeout_s``.
  A transient failure is retried with backoff; an auth, token or gone answer pauses only the duty that met it,
  which tries again later (docs/protocol.md §2). Nothing is fatal.
- The commit cursor moves only over settled rows (replied, skipped, dead-lettered, duplicate); a dedupe window of
  row ids and messageIds makes a 410 re-read or a rewind deliver nothing twice (docs/protocol.md §8).
- A message failing while others succeed is retried, then dead-lettered (a reference, never evicted) and its
  sender told; failures across messages are a backend outage, waited out without dead letters.
- Workflow code is deterministic and does no I/O; any change to its commands goes behind ``workflow.patched`` and
  the histories in ``tests/histories`` must still replay. No token ever enters its input, state or history.
"""
