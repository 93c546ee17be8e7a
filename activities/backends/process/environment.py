"""The environment of a backend command: an allowlist of the worker's variables, never one of its secrets.

A command run by ``exec`` or ``claude-code`` answers messages from other workspaces, so it must not see what the
worker holds: the codec keys, the Temporal API key and TLS key paths, workspace tokens, cloud credentials meant
for the worker. Its environment is therefore built from names, not inherited (docs/architecture.md §3):

- :data:`BASE_VARIABLES`, which every program expects: ``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``, the
  locale (``LANG``, ``LANGUAGE``, ``LC_*``), ``TZ`` and ``TMPDIR``; each copied from the worker when set there;
- the backend's own defaults (``claude-code``: what Claude Code reads, :data:`CLAUDE_CODE_VARIABLES`);
- what the operator names with ``-o pass_env=NAME,PREFIX_*`` (:func:`parse_pass_env`): names only, values stay in
  the worker's environment; a trailing ``*`` copies every variable with that prefix;
- the ``MOLECULE_*`` message metadata (:func:`metadata_env`) with ``-o env=true``, set per message.

Variables matching :data:`NEVER_PASSED` never reach a command: naming one in ``pass_env`` is refused, and a
prefix (``MOLECULE_*``, ``TEMPORAL_*``) skips them.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from pydantic import BaseModel, ConfigDict

from activities.backends.base import BackendRequest

BASE_VARIABLES: tuple[str, ...] = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
)
"""What every command gets from the worker, when set there: the program search path, the user and their home
(config files, ``~/.claude``), the shell that tools start, the locale (so text is decoded as UTF-8), the time zone
and the temporary directory. ``LC_*`` is a prefix."""

CLAUDE_CODE_VARIABLES: tuple[str, ...] = (
    "ANTHROPIC_*",
    "CLAUDE_CODE_*",
    "CLAUDE_CONFIG_DIR",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "NODE_EXTRA_CA_CERTS",
)
"""What ``claude-code`` also passes by default: Claude Code's own settings (``ANTHROPIC_API_KEY``,
``ANTHROPIC_AUTH_TOKEN``, ``ANTHROPIC_BASE_URL``, ``ANTHROPIC_MODEL``, ``CLAUDE_CODE_OAUTH_TOKEN``,
``CLAUDE_CODE_USE_BEDROCK``/``_VERTEX``, ``CLAUDE_CONFIG_DIR``, ...), and the proxy and CA settings it needs to reach
the API. Cloud credentials (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``CLOUD_ML_REGION``) for Bedrock or
Vertex are not passed unless named with ``-o pass_env``."""

NEVER_PASSED: tuple[str, ...] = (
    "MOLECULE_CODEC_KEYS",
    "MOLECULE_TOKENS_FILE",
    "MOLECULE_*TOKEN*",
    "MOLECULE_*SECRET*",
    "MOLECULE_*KEY*",
    "TEMPORAL_API_KEY",
    "TEMPORAL_TLS*",
    "TEMPORAL_GRPC_META_*",
    "TEMPORAL_CONFIG_FILE",
)
"""The worker's secrets and their paths (patterns, compared upper-cased): payload codec keys, workspace tokens and
the file holding them, the Temporal Cloud API key, TLS client certificates and keys, gRPC headers (which may carry
credentials) and the Temporal config file (which may hold an API key)."""

METADATA_VARIABLES: tuple[str, ...] = (
    "MOLECULE_WORKSPACE_ID",
    "MOLECULE_ROW_ID",
    "MOLECULE_SOURCE_ID",
    "MOLECULE_CONTEXT_ID",
    "MOLECULE_MESSAGE_ID",
    "MOLECULE_ATTEMPT",
)
"""The per-message variables of ``-o env=true`` (:func:`metadata_env`), in that order."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|PRIVATE|COOKIE", re.IGNORECASE)
_MIN_REDACTED_CHARS = 8


def metadata_env(request: BackendRequest) -> dict[str, str]:
    """The ``MOLECULE_*`` variables that ``-o env=true`` adds for one message; never a token.

    Args:
        request: The inbound message.

    Returns:
        ``MOLECULE_WORKSPACE_ID``, ``MOLECULE_ROW_ID``, ``MOLECULE_SOURCE_ID`` (empty for the canvas),
        ``MOLECULE_CONTEXT_ID`` (empty when absent), ``MOLECULE_MESSAGE_ID`` and ``MOLECULE_ATTEMPT``
        (1-based).
    """
    values = (
        request.workspace_id,
        request.row_id,
        request.source_id or "",
        request.message.context_id or "",
        request.message.message_id,
        str(request.attempt),
    )
    return dict(zip(METADATA_VARIABLES, values, strict=True))


def never_passed(name: str) -> bool:
    """Whether a variable is one of the worker's secrets (:data:`NEVER_PASSED`), which no command may see."""
    upper = name.upper()
    return any(fnmatchcase(upper, pattern) for pattern in NEVER_PASSED)


def parse_pass_env(value: str) -> tuple[str, ...]:
    """Read ``-o pass_env``: variable names and ``PREFIX*`` prefixes, separated by commas (spaces allowed).

    Args:
        value: The option text, e.g. ``"AWS_REGION, AWS_PROFILE, OPENAI_*"``; empty for none.

    Returns:
        The names and prefixes in the order given, without duplicates.

    Raises:
        ValueError: An entry holds a value (``NAME=...``), is not a variable name (a ``*`` is allowed only at
            the end, after at least one character), names a worker secret (:data:`NEVER_PASSED`, also for a
            prefix that only such secrets can match), or names a message metadata variable (set per message by
            ``-o env``). The text says which entry and why.
    """
    entries: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if "=" in entry:
            raise ValueError(
                f"{entry.split('=', 1)[0]!r}: pass_env takes variable names, never values; "
                "set the value in the worker's environment"
            )
        if entry == "*":
            raise ValueError("'*' would hand the worker's whole environment to the command; name the variables")
        name = entry.removesuffix("*")
        if not _NAME.match(name):
            raise ValueError(
                f"{entry!r} is not a variable name (letters, digits, underscores; a trailing * for a prefix "
                "such as AWS_*)"
            )
        if never_passed(name) or (entry.endswith("*") and _only_secrets(name)):
            raise ValueError(f"{entry!r} is a secret of the worker and is never passed to a command")
        if name in METADATA_VARIABLES:
            raise ValueError(f"{entry!r} is set per message by the backend (-o env=true), not taken from the worker")
        if entry not in entries:
            entries.append(entry)
    return tuple(entries)


def _only_secrets(prefix: str) -> bool:
    """Whether every name starting with ``prefix`` is a worker secret (e.g. ``TEMPORAL_TLS_``)."""
    upper = prefix.upper()
    return any(
        pattern.endswith("*") and "*" not in pattern[:-1] and upper.startswith(pattern[:-1]) for pattern in NEVER_PASSED
    )


def _allowed(name: str, patterns: Iterable[str]) -> bool:
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


def child_env(
    environ: Mapping[str, str],
    patterns: Iterable[str],
    request: BackendRequest | None = None,
) -> dict[str, str]:
    """Build a command's environment from the worker's: the allowed names, minus secrets, plus metadata.

    Args:
        environ: The worker's environment (``os.environ``).
        patterns: Names and ``PREFIX*`` prefixes to copy when set: :data:`BASE_VARIABLES`, the backend's defaults
            and ``-o pass_env``. Names matching :data:`NEVER_PASSED` are skipped whatever the patterns say.
        request: The message whose :func:`metadata_env` to add (``-o env=true``), or ``None`` for none.

    Returns:
        Variable names to values.
    """
    patterns = tuple(patterns)
    env = {name: value for name, value in environ.items() if _allowed(name, patterns) and not never_passed(name)}
    if request is not None:
        env.update(metadata_env(request))
    return env


def redact(text: str, env: Mapping[str, str]) -> str:
    """Remove from a command's output the values of the secret-looking variables it was given.

    A failing command's stderr goes into the error that is logged and kept in the workflow's history; a command
    that prints its environment (or an error that quotes an API key) must not put a key there.

    Args:
        text: Output of the command (e.g. the tail of its stderr).
        env: The environment it ran with.

    Returns:
        ``text`` with the value of every variable whose name suggests a secret (``*KEY*``, ``*TOKEN*``,
        ``*SECRET*``, ``*PASSW*``, ``*CREDENTIAL*``, ``*AUTH*``, ...; values of 8 characters or more) replaced by
        ``[NAME]``.
    """
    secrets = sorted(
        (
            (value, name)
            for name, value in env.items()
            if _SECRET_NAME.search(name) and len(value) >= _MIN_REDACTED_CHARS
        ),
        key=lambda item: -len(item[0]),
    )
    for value, name in secrets:
        text = text.replace(value, f"[{name}]")
    return text


class ChildEnvInfo(BaseModel):
    """Which variables reach a backend's command, as ``molecule-connect backends`` shows them."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    inherited: tuple[str, ...]
    """Names and ``PREFIX*`` prefixes copied from the worker's environment when set, before ``-o pass_env``."""
    metadata: tuple[str, ...] = METADATA_VARIABLES
    """Set for each message with ``-o env=true``."""
    never: tuple[str, ...] = NEVER_PASSED
    """Never passed, even when named in ``-o pass_env`` or matched by a prefix."""

    def lines(self, width: int = 110) -> list[str]:
        """The three fields for a terminal listing, wrapped to ``width`` columns, continuation lines indented."""
        entries = (
            f"environment: {', '.join(self.inherited)}; and what -o pass_env names",
            f"  with -o env=true: {', '.join(self.metadata)}",
            f"  never: {', '.join(self.never)}",
        )
        lines: list[str] = []
        for entry in entries:
            indent = " " * (len(entry) - len(entry.lstrip()) + 4)
            lines += textwrap.wrap(entry, width=width, subsequent_indent=indent, break_on_hyphens=False)
        return lines
