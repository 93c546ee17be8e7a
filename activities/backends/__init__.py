"""Backends: what answers a message once dispatch has it (docs/architecture.md §3).

Modules:

- ``base``: the contract: :class:`Backend`, :class:`BackendRequest`, :class:`BackendResponse`, the errors.
- ``options``: how a backend declares its ``-o key=value`` options (one pydantic model), and their parsing.
- ``registry``: built-in backends, plugins from the ``molecule_connect.backends`` entry points, and lookup.
- ``echo``: replies with the message through a template.
- ``exec``: runs a command per message, text (or the JSON request) on stdin and stdout as the reply.
- ``claude_code``: ``claude -p`` per message, one Claude session per conversation.
- ``http``: forwards each message to an A2A v0.3 agent (``message/send``) and relays its Message or Task.
- ``process``: the process code under ``exec`` and ``claude-code``: spawning, process groups, running a command to
  its end, and its environment (an allowlist, ``-o pass_env``, never a worker secret).

Contract:

- A backend is built once per (name, options) by :func:`create_backend` and shared by concurrent dispatches;
  its ``handle(request)`` turns one message into reply parts and ``close()`` runs at worker shutdown.
- Failures have two classes. :class:`BackendError`: this message failed (non-zero exit, timeout, bad output);
  it is retried, then dead-lettered (at once for its subclass :class:`PermanentBackendError`, e.g. an agent
  rejecting the request as invalid). :class:`BackendConfigError`: nothing can succeed (unknown backend, bad
  option, missing program); the workspace is blocked. Options are validated when the backend is built, so a
  misconfiguration shows before the first message.
- A backend never sees Temporal. Dispatch cancels ``handle`` on activity cancellation; the backend stops its
  work (e.g. kills its process group) and re-raises :class:`asyncio.CancelledError`.
- Options never hold secrets (an option that needs one names an environment variable), and a backend never
  logs message bodies above DEBUG. Commands get an allowlisted environment, never the worker's secrets.
"""

from activities.backends.base import (
    Backend,
    BackendConfigError,
    BackendError,
    BackendRequest,
    BackendResponse,
    PermanentBackendError,
)
from activities.backends.options import OptionInfo
from activities.backends.registry import (
    BUILTIN_BACKENDS,
    ENTRY_POINT_GROUP,
    BackendFactory,
    BackendInfo,
    available_backends,
    create_backend,
)

__all__ = [
    "BUILTIN_BACKENDS",
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendConfigError",
    "BackendError",
    "BackendFactory",
    "BackendInfo",
    "BackendRequest",
    "BackendResponse",
    "OptionInfo",
    "PermanentBackendError",
    "available_backends",
    "create_backend",
]
