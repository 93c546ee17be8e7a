"""Platform tokens by workspace id, resolved inside the worker and never sent through Temporal.

docs/architecture.md §2: no secret enters workflow input, activity input/output or history. Activities receive a
workspace id and ask a `TokenStore` for the bearer token at the moment they build a request.

Sources, in order of precedence:

1. `MOLECULE_TOKENS_FILE`: a `.json` or `.toml` file mapping workspace id to token. Accepted shapes::

       {"ws-1": "tok-1", "ws-2": "tok-2"}            # JSON, flat

       ws-1 = "tok-1"                                 # TOML, flat

       [tokens]                                       # TOML, under a [tokens] table
       ws-1 = "tok-1"

   In either format a top-level `tokens` key holding a table/object is read as a section, and its entries are
   merged with any flat top-level entries (a workspace listed twice is an error). The file must not be
   accessible by group or others (`chmod 600`). It is re-read whenever its mtime, size, inode or mode changes,
   so fixing a token or the mode heals a blocked connector without a restart.
2. `MOLECULE_WORKSPACE_TOKEN`: the token of **one** workspace: the one named by `MOLECULE_WORKSPACE_ID`, else the
   one given to `run`. It is never sent for any other workspace: a token authenticates as its own workspace, so
   another workspace's request signed with it would be refused (`403`) or, worse, act as the wrong identity.

A lookup for a workspace neither source holds raises `MissingTokenError` (a `LookupError`): the activity that asked
fails so that a worker holding the token can take it.

When the file is configured but unusable (missing, too permissive, unparsable), lookups fail with `TokenError`
instead of falling back to `MOLECULE_WORKSPACE_TOKEN`: sending the fallback token to a workspace the broken file
may list would authenticate as the wrong identity.

No token ever appears in an exception message, a `repr` or a log record.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TOKENS_FILE_ENV = "MOLECULE_TOKENS_FILE"
"""Environment variable naming the tokens file."""

WORKSPACE_TOKEN_ENV = "MOLECULE_WORKSPACE_TOKEN"
"""Environment variable holding the token of one workspace."""

WORKSPACE_ID_ENV = "MOLECULE_WORKSPACE_ID"
"""Environment variable naming the workspace `MOLECULE_WORKSPACE_TOKEN` belongs to."""

_SECTION = "tokens"


class TokenError(ValueError):
    """A token cannot be resolved; the message is one actionable line and never contains a token."""


class MissingTokenError(TokenError, LookupError):
    """No token is known for a workspace: this worker must not serve it (another worker may).

    Attributes:
        workspace_id: The workspace that has no token.
    """

    def __init__(self, workspace_id: str, bound_to: str | None = None) -> None:
        """Create the error.

        Args:
            workspace_id: The workspace that has no token.
            bound_to: The workspace `MOLECULE_WORKSPACE_TOKEN` belongs to, when it is set (for the message).
        """
        if bound_to is not None:
            advice = f"{WORKSPACE_TOKEN_ENV} is the token of {bound_to}; add {workspace_id} to {TOKENS_FILE_ENV}"
        else:
            advice = f"set {WORKSPACE_TOKEN_ENV} or add it to {TOKENS_FILE_ENV}"
        super().__init__(f"no token for workspace {workspace_id}: {advice}")
        self.workspace_id = workspace_id


@dataclass(frozen=True)
class _FileSignature:
    """What identifies one version of the tokens file without reading it."""

    mtime_ns: int
    size: int
    inode: int
    mode: int


class TokenStore:
    """Resolve the platform bearer token for a workspace id from a tokens file and one workspace's token.

    Safe to share between threads and coroutines; a lookup costs one `stat` unless the file changed.
    """

    def __init__(
        self,
        *,
        tokens_file: Path | None = None,
        workspace_token: str | None = None,
        workspace_id: str | None = None,
    ) -> None:
        """Create a store.

        Args:
            tokens_file: Path of a `.json` or `.toml` tokens file (module docstring), or None for none. It is
                not read until the first lookup or `validate()`.
            workspace_token: The token of `workspace_id` (`MOLECULE_WORKSPACE_TOKEN`), or None/empty for none. It
                is used for that workspace only, when the file does not list it.
            workspace_id: The workspace `workspace_token` belongs to.

        Raises:
            TokenError: `workspace_token` is given without `workspace_id`.
        """
        workspace_token = workspace_token or None
        workspace_id = (workspace_id or "").strip() or None
        if workspace_token is not None and workspace_id is None:
            raise TokenError(
                f"{WORKSPACE_TOKEN_ENV} is one workspace's token: set {WORKSPACE_ID_ENV} to that workspace's id, "
                f"or list every workspace's token in {TOKENS_FILE_ENV}"
            )
        self._tokens_file = tokens_file
        self._workspace_token = workspace_token
        self._workspace_id = workspace_id if workspace_token is not None else None
        self._lock = threading.Lock()
        self._signature: _FileSignature | None = None
        self._tokens: dict[str, str] = {}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, *, workspace_id: str | None = None) -> TokenStore:
        """Create a store from `MOLECULE_TOKENS_FILE`, `MOLECULE_WORKSPACE_TOKEN` and `MOLECULE_WORKSPACE_ID`.

        Empty values count as unset; `~` in the file path is expanded. `MOLECULE_WORKSPACE_TOKEN` belongs to the
        workspace `MOLECULE_WORKSPACE_ID` names, else to ``workspace_id`` (the workspace `run` serves).

        Args:
            environ: Environment to read, `os.environ` by default.
            workspace_id: The workspace the caller serves (`run WORKSPACE_ID`), or None for a worker of many.

        Returns:
            A store that has not read the file yet (call `validate()` to check it eagerly).

        Raises:
            TokenError: `MOLECULE_WORKSPACE_TOKEN` is set but neither `MOLECULE_WORKSPACE_ID` nor ``workspace_id``
                says whose it is.
        """
        file_value = environ.get(TOKENS_FILE_ENV, "").strip()
        tokens_file = Path(file_value).expanduser() if file_value else None
        owner = environ.get(WORKSPACE_ID_ENV, "").strip() or workspace_id
        return cls(tokens_file=tokens_file, workspace_token=environ.get(WORKSPACE_TOKEN_ENV), workspace_id=owner)

    @property
    def tokens_file(self) -> Path | None:
        """Path of the tokens file, or None when only `MOLECULE_WORKSPACE_TOKEN` is used."""
        return self._tokens_file

    @property
    def token_workspace(self) -> str | None:
        """The workspace `MOLECULE_WORKSPACE_TOKEN` belongs to, or None when it is not set."""
        return self._workspace_id

    def __repr__(self) -> str:
        bound = f"set for {self._workspace_id}" if self._workspace_token else "unset"
        return f"TokenStore(tokens_file={str(self._tokens_file)!r}, workspace_token={bound})"

    def token_for(self, workspace_id: str) -> str:
        """Return the bearer token for a workspace.

        Args:
            workspace_id: Molecule workspace id, e.g. `"ws-1"`.

        Returns:
            The token from the tokens file, else `MOLECULE_WORKSPACE_TOKEN` when it belongs to this workspace.

        Raises:
            MissingTokenError: If neither source has a token for this workspace (a `LookupError`).
            TokenError: If the tokens file is configured but missing, readable by others, unparsable, of an
                unsupported type, or holds a non-string or empty value.
        """
        tokens = self._load() if self._tokens_file is not None else {}
        token = tokens.get(workspace_id)
        if token is None and workspace_id == self._workspace_id:
            token = self._workspace_token
        if token is None:
            raise MissingTokenError(workspace_id, self._workspace_id)
        return token

    def validate(self) -> None:
        """Load the tokens file now and check that at least one token source exists; for CLI startup.

        Raises:
            TokenError: If the tokens file is unusable (see `token_for`), or neither `MOLECULE_TOKENS_FILE`
                nor `MOLECULE_WORKSPACE_TOKEN` is set.
        """
        if self._tokens_file is None and self._workspace_token is None:
            raise TokenError(f"no platform token configured: set {WORKSPACE_TOKEN_ENV} or {TOKENS_FILE_ENV}")
        if self._tokens_file is not None:
            count = len(self._load())
            logger.info("tokens file loaded", extra={"tokens_file": str(self._tokens_file), "workspaces": count})

    def _load(self) -> dict[str, str]:
        """Return the file's mapping, re-reading it only when its signature changed.

        Failures are not cached, so every lookup retries until the file is fixed.
        """
        path = self._tokens_file
        assert path is not None
        with self._lock:
            signature = _stat(path)
            if signature != self._signature:
                self._tokens = _read_tokens_file(path)
                self._signature = signature
                logger.debug("tokens file read", extra={"tokens_file": str(path), "workspaces": len(self._tokens)})
            return self._tokens


def _stat(path: Path) -> _FileSignature:
    """Stat the tokens file and refuse it when group or others can access it.

    Raises:
        TokenError: If the file is missing, not a regular file, or its mode has any group/other bit.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise TokenError(f"tokens file {path} does not exist: create it or fix {TOKENS_FILE_ENV}") from None
    except OSError as exc:
        raise TokenError(f"tokens file {path} cannot be read ({exc.strerror}): check {TOKENS_FILE_ENV}") from None
    if not path.is_file():
        raise TokenError(f"tokens file {path} is not a regular file: point {TOKENS_FILE_ENV} at a .json or .toml file")
    # POSIX permission bits only; Windows reports synthetic modes and protects files with ACLs instead.
    if os.name == "posix" and st.st_mode & 0o077:
        raise TokenError(
            f"tokens file {path} is readable by others (mode {st.st_mode & 0o777:04o}): run chmod 600 {path}"
        )
    return _FileSignature(mtime_ns=st.st_mtime_ns, size=st.st_size, inode=st.st_ino, mode=st.st_mode)


def _read_tokens_file(path: Path) -> dict[str, str]:
    """Parse the tokens file into `{workspace_id: token}`.

    Raises:
        TokenError: On an unsupported extension, a read or parse error (with line and column when the parser
            gives them) or an invalid shape. Parser exceptions are not chained: a JSON error object keeps the
            whole document, tokens included.
    """
    suffix = path.suffix.lower()
    if not suffix:
        raise TokenError(f"tokens file {path} has no .json or .toml extension: rename it to say its format")
    if suffix not in (".json", ".toml"):
        raise TokenError(f"tokens file {path} has unsupported extension {suffix!r}: use .json or .toml")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TokenError(f"tokens file {path} cannot be read ({exc.strerror}): check its permissions") from None
    document: Any
    error: str | None = None
    if suffix == ".json":
        try:
            document = json.loads(raw)
        except UnicodeDecodeError:
            error = "not valid UTF-8"
        except json.JSONDecodeError as exc:
            error = f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    else:
        try:
            document = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            error = "not valid UTF-8"
        except tomllib.TOMLDecodeError as exc:
            # tomllib's message carries "(at line L, column C)" and never the offending text.
            error = str(exc)
    if error is not None:
        raise TokenError(f"tokens file {path} is not valid {suffix[1:].upper()}: {error}")
    return _normalize(path, document)


def _normalize(path: Path, document: Any) -> dict[str, str]:
    """Merge flat entries and the optional `tokens` section into one mapping, checking every value."""
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise TokenError(f"tokens file {path} must map workspace ids to tokens, got a {kind} at top level")
    entries: list[tuple[str, Any]] = []
    for key, value in document.items():
        if key == _SECTION and isinstance(value, dict):
            entries.extend(value.items())
        else:
            entries.append((key, value))
    tokens: dict[str, str] = {}
    for workspace_id, token in entries:
        if not isinstance(token, str):
            raise TokenError(
                f"tokens file {path}: the token for workspace {workspace_id} must be a string, "
                f"got {type(token).__name__}"
            )
        if not token.strip():
            raise TokenError(f"tokens file {path}: the token for workspace {workspace_id} is empty")
        if workspace_id in tokens:
            raise TokenError(
                f"tokens file {path}: workspace {workspace_id} is listed twice (top level and [{_SECTION}])"
            )
        tokens[workspace_id] = token
    return tokens
