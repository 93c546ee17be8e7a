"""Fleets: many connectors declared in one TOML file, applied idempotently, and shown as one table.

A fleet file has an optional ``name``, a ``[defaults]`` table and one ``[[workspace]]`` table per connector::

    name = "prod"                       # default: the file name without .toml

    [defaults]
    platform_url = "https://api.molecule.example"
    task_queue = "molecule-connect"     # default; a [[workspace]] may set its own
    backend = "exec"
    options = { cmd = "my-agent --stdio" }
    settings = { max_concurrency = 8 }

    [[workspace]]
    id = "ws-a"

    [[workspace]]
    id = "ws-b"
    settings = { max_attempts = 3 }    # merged key by key over [defaults] settings

A workspace inherits ``platform_url``, ``backend``, ``task_queue`` and ``settings`` from ``[defaults]``; it inherits
``options`` (key by key) only while it keeps the default backend, since one backend's options mean nothing to another.
A workspace's task queue is, first found: its own ``task_queue``, the ``--task-queue`` of ``fleet apply`` (or
``MOLECULE_TASK_QUEUE``), ``[defaults] task_queue``, ``molecule-connect``.

``apply`` compares each listed workspace with its running connector: missing → ``start``, with the memo
``fleet: <name>``; settings differ → ``configure`` with only the changed fields; else ``unchanged``. ``platform_url``,
backend and task queue are fixed for a run, so a change there is reported as "restart needed (drain, then apply)".
With ``prune``, running connectors that this fleet started (memo ``fleet: <name>``) on one of its task queues and
that the file no longer lists are drained; connectors started by hand (``run``, ``start``) or by another fleet are
never touched. Tokens never appear here: they stay in the worker's ``MOLECULE_TOKENS_FILE``.
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError
from temporalio.client import Client

from activities.backends import create_backend
from activities.backends.base import BackendConfigError
from activities.messages import BackendSpec
from worker import control
from worker.control import ConnectorError
from worker.settings import TASK_QUEUE
from workflows.messages import ConnectInput, ConnectSettings

SECRET_KEYS = frozenset({"token", "secret", "api_key"})
"""Keys refused anywhere in a fleet file: a fleet file is shared and versioned, tokens belong in the tokens file."""

OptionValue = str | int | float | bool
"""A backend option as TOML writes it; it reaches the backend as a string (``true``/``false`` for booleans)."""


class FleetFileError(ValueError):
    """The fleet file cannot be used; the message is one line naming the file, the line and what to fix."""


NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class _FleetModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class FleetDefaults(_FleetModel):
    """The ``[defaults]`` table: what every workspace gets unless it overrides it."""

    platform_url: str | None = None
    """Platform base URL; required here or in every workspace."""
    backend: str = "echo"
    """Backend name."""
    task_queue: NonEmpty | None = None
    """Task queue of the workspaces without their own; ``fleet apply --task-queue`` overrides it."""
    options: dict[str, OptionValue] = {}
    """Backend options of the default backend."""
    settings: dict[str, Any] = {}
    """``ConnectSettings`` fields (validated once merged with a workspace's)."""


class FleetWorkspace(_FleetModel):
    """One ``[[workspace]]`` table."""

    id: str
    """The workspace id; its connector is ``connect-<id>``."""
    platform_url: str | None = None
    """Overrides ``[defaults] platform_url``."""
    backend: str | None = None
    """Overrides ``[defaults] backend`` (then ``[defaults] options`` are not inherited)."""
    task_queue: NonEmpty | None = None
    """This workspace's task queue: overrides ``[defaults] task_queue`` and ``fleet apply --task-queue``."""
    options: dict[str, OptionValue] = {}
    """Backend options, merged key by key over the inherited ones."""
    settings: dict[str, Any] = {}
    """``ConnectSettings`` fields, merged key by key over ``[defaults] settings``."""


class FleetFile(_FleetModel):
    """The whole file as TOML gives it."""

    name: NonEmpty | None = None
    """The fleet's name, marked on the connectors it starts (memo ``fleet``); default: the file name's stem."""
    defaults: FleetDefaults = FleetDefaults()
    workspace: list[FleetWorkspace] = []


@dataclass(frozen=True)
class Fleet:
    """A loaded fleet file: the connector every listed workspace should have, in file order.

    Attributes:
        path: Where it was read from.
        connectors: One ``ConnectInput`` per ``[[workspace]]``, defaults merged in.
        name: The fleet's name (``name``, else the file name's stem).
        default_task_queue: ``[defaults] task_queue``, None when unset.
        task_queues: The workspaces that set their own ``task_queue``: workspace id → task queue.
    """

    path: Path
    connectors: tuple[ConnectInput, ...]
    name: str = "fleet"
    default_task_queue: str | None = None
    task_queues: Mapping[str, str] = field(default_factory=dict)

    @property
    def workspace_ids(self) -> list[str]:
        """The listed workspace ids, in file order."""
        return [c.workspace_id for c in self.connectors]

    def task_queue_of(self, workspace_id: str, override: str | None = None) -> str:
        """A workspace's task queue: its own, else ``override`` (``--task-queue``), else the fleet default's."""
        return self.task_queues.get(workspace_id) or self.fleet_task_queue(override)

    def fleet_task_queue(self, override: str | None = None) -> str:
        """The fleet's default task queue: ``override`` (``--task-queue``), else ``[defaults]``'s, else the default."""
        return override or self.default_task_queue or TASK_QUEUE

    def all_task_queues(self, override: str | None = None) -> list[str]:
        """Every task queue the fleet uses (its default one included): the scope of ``--prune``."""
        return sorted({self.fleet_task_queue(override), *(self.task_queue_of(w, override) for w in self.workspace_ids)})


def load_fleet(path: Path) -> Fleet:
    """Read and validate a fleet file.

    Args:
        path: The TOML file.

    Returns:
        The fleet, with defaults merged into each workspace and every value validated (not the backends: see
        :func:`check_backends`).

    Raises:
        FleetFileError: Unreadable file, bad TOML, an unknown or invalid key, a secret-looking key, a duplicate
            or missing id, or a workspace without platform URL. The message is ``FILE:LINE: ...`` on one line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise FleetFileError(f"cannot read fleet file {path}: {getattr(err, 'strerror', None) or err}") from None
    locate = _Locator(path, text)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        at = re.search(r"\(at line (\d+), column (\d+)\)", message)
        where = f"{path}:{at.group(1)}:{at.group(2)}" if at else str(path)
        reason = re.sub(r" ?\(at line \d+, column \d+\)", "", message)
        raise FleetFileError(f"{where}: invalid TOML: {reason}") from None
    _reject_secrets(raw, (), locate)
    try:
        parsed = FleetFile.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(first["loc"])
        if "options" in loc:  # drop pydantic's union member tag: options.cmd, not options.cmd.str
            loc = loc[: loc.index("options") + 2]
        raise locate.error(loc, first["msg"]) from None
    if not parsed.workspace:
        raise FleetFileError(f"{path}: lists no [[workspace]]; add one [[workspace]] table with an id per connector")
    seen: set[str] = set()
    connectors = []
    for index, workspace in enumerate(parsed.workspace):
        if workspace.id in seen:
            raise locate.error(("workspace", index, "id"), f"duplicate workspace id {workspace.id!r}")
        seen.add(workspace.id)
        connectors.append(_connect_input(parsed.defaults, workspace, index, locate))
    return Fleet(
        path=path,
        connectors=tuple(connectors),
        name=parsed.name or path.stem,
        default_task_queue=parsed.defaults.task_queue,
        task_queues={w.id: w.task_queue for w in parsed.workspace if w.task_queue},
    )


def _connect_input(defaults: FleetDefaults, workspace: FleetWorkspace, index: int, locate: _Locator) -> ConnectInput:
    where: tuple[str | int, ...] = ("workspace", index)
    platform_url = workspace.platform_url or defaults.platform_url
    if platform_url is None:
        raise locate.error(where, "no platform_url: set it in [defaults] or in this [[workspace]]")
    backend = workspace.backend or defaults.backend
    inherited = defaults.options if backend == defaults.backend else {}
    options = {key: _text(value) for key, value in {**inherited, **workspace.options}.items()}
    try:
        settings = ConnectSettings.model_validate({**defaults.settings, **workspace.settings})
    except ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        owner = where if key in workspace.settings or key not in defaults.settings else ("defaults",)
        raise locate.error((*owner, "settings", *first["loc"]), first["msg"], workspace=(index, workspace.id)) from None
    try:
        return ConnectInput(
            workspace_id=workspace.id,
            platform_url=platform_url,
            backend=BackendSpec(name=backend, options=options),
            settings=settings,
        )
    except ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        owner = ("defaults",) if key == "platform_url" and workspace.platform_url is None else where
        raise locate.error((*owner, *first["loc"]), first["msg"], workspace=(index, workspace.id)) from None


def _text(value: object) -> str:
    """A TOML/JSON scalar as typed: booleans lower-case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _reject_secrets(node: object, loc: tuple[str | int, ...], locate: _Locator) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if str(key).lower() in SECRET_KEYS:
                raise locate.error(
                    (*loc, key),
                    "tokens and secrets never go in a fleet file: put workspace tokens in the worker's "
                    "MOLECULE_TOKENS_FILE (mode 600), and name an environment variable in backend options",
                )
            _reject_secrets(value, (*loc, key), locate)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _reject_secrets(item, (*loc, index), locate)


async def check_backends(fleet: Fleet) -> None:
    """Build each distinct backend once, so a misconfiguration fails before anything starts.

    Raises:
        FleetFileError: A backend name or option is rejected; the message names the workspace.
    """
    checked: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for connector in fleet.connectors:
        spec = connector.backend
        key = (spec.name, tuple(sorted(spec.options.items())))
        if key in checked:
            continue
        try:
            backend = create_backend(spec.name, spec.options)
        except BackendConfigError as err:
            raise FleetFileError(f"{fleet.path}: workspace {connector.workspace_id}: {err}") from None
        await backend.close()
        checked.add(key)


class _Locator:
    """Finds the line of a key in the file text, for errors (tomllib reports lines only for syntax errors)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def error(
        self, loc: tuple[str | int, ...], problem: str, *, workspace: tuple[int, str] | None = None
    ) -> FleetFileError:
        """Build ``FILE:LINE: WHERE: KEY: PROBLEM`` for the key at ``loc`` (e.g. ``("workspace", 1, "id")``)."""
        start, end, where, keys = self._section(loc)
        if workspace is not None and loc[:1] == ("defaults",):
            where = f"[[workspace]] #{workspace[0] + 1} ({workspace[1]}), from [defaults]"
        line = self._find(start, end, keys)
        dotted = ".".join(str(k) for k in keys)
        head = f"{self.path}:{line}" if line else str(self.path)
        return FleetFileError(f"{head}: {where}: {dotted + ': ' if dotted else ''}{problem}")

    def _section(self, loc: tuple[str | int, ...]) -> tuple[int, int, str, tuple[str | int, ...]]:
        """The line range (0-based, end exclusive) of the table ``loc`` starts in, its name and the remaining keys."""
        headers = [(i, line.strip()) for i, line in enumerate(self.lines) if re.match(r"\s*\[", line)]
        if loc[:1] == ("workspace",) and len(loc) >= 2 and isinstance(loc[1], int):
            index = loc[1]
            starts = [i for i, h in headers if re.match(r"\[\[\s*workspace\s*\]\]", h)]
            if index < len(starts):
                start = starts[index]
                end = next((i for i, h in headers if i > start and not re.match(r"\[\s*workspace\.", h)), None)
                end = end if end is not None else len(self.lines)
                return start, end, f"[[workspace]] #{index + 1}{self._id_of(start, end)}", loc[2:]
            return 0, len(self.lines), f"[[workspace]] #{index + 1}", loc[2:]
        if loc[:1] == ("defaults",):
            starts = [i for i, h in headers if re.match(r"\[\s*defaults\s*[\].]", h)]
            if starts:
                end = next(
                    (i for i, h in headers if i > starts[-1] and not re.match(r"\[\s*defaults\s*[\].]", h)), None
                )
                return starts[0], end if end is not None else len(self.lines), "[defaults]", loc[1:]
            return 0, len(self.lines), "[defaults]", loc[1:]
        return 0, len(self.lines), "top level", loc

    def _id_of(self, start: int, end: int) -> str:
        for line in self.lines[start:end]:
            match = re.match(r"""\s*id\s*=\s*["']([^"']*)["']""", line)
            if match:
                return f" ({match.group(1)})"
        return ""

    def _find(self, start: int, end: int, keys: tuple[str | int, ...]) -> int | None:
        """1-based line of the deepest of ``keys`` written in the range, else of the range's header."""
        for key in reversed([k for k in keys if isinstance(k, str)]):
            name = re.escape(key)
            pattern = re.compile(rf"""(^|[\s{{,.])["']?{name}["']?\s*=|^\s*\[\[?\s*{name}\s*[\].]""")
            for i in range(start, end):
                if pattern.search(self.lines[i]):
                    return i + 1
        return start + 1 if start < len(self.lines) and self.lines else None


# --- plan and apply -------------------------------------------------------------------------------------------------

StepKind = Literal["start", "configure", "unchanged", "restart", "drain", "error"]

RESTART_ADVICE = "restart needed (drain, then apply)"


@dataclass(frozen=True)
class Step:
    """What ``apply`` does (or would do) for one workspace.

    Attributes:
        workspace_id: The workspace.
        kind: ``start``, ``configure``, ``unchanged``, ``restart`` (a fixed field changed), ``drain`` (pruned)
            or ``error`` (its current state could not be read).
        changes: For ``configure``: the ``ConnectSettings`` fields to set (JSON values).
        reason: For ``restart`` and ``error``: what differs, or what went wrong.
        input: For ``start``: the connector to start.
        task_queue: For ``start``: where to start it.
    """

    workspace_id: str
    kind: StepKind
    changes: Mapping[str, object] = field(default_factory=dict)
    reason: str = ""
    input: ConnectInput | None = None
    task_queue: str | None = None

    def describe(self) -> str:
        """One line, e.g. ``ws-a: configure max_concurrency=8``."""
        what = {
            "start": "start",
            "configure": "configure " + " ".join(f"{k}={_text(v)}" for k, v in self.changes.items()),
            "unchanged": "unchanged",
            "restart": f"{RESTART_ADVICE}: {self.reason}",
            "drain": "drain (pruned)",
            "error": f"error: {self.reason}",
        }[self.kind]
        return f"{self.workspace_id}: {what}"


@dataclass(frozen=True)
class Observed:
    """A workspace's connector as found: not running, or running with its status and fixed fields."""

    running: bool
    task_queue: str | None = None
    platform_url: str | None = None
    backend: BackendSpec | None = None
    settings: ConnectSettings | None = None
    error: str | None = None


def decide(desired: ConnectInput, observed: Observed, *, task_queue: str) -> Step:
    """The step that brings ``observed`` to ``desired`` (pure: no I/O).

    Args:
        desired: The connector as the fleet file declares it.
        observed: What runs now.
        task_queue: The workspace's task queue in the fleet.

    Returns:
        ``start`` when nothing runs; ``restart`` when the platform URL, backend or task queue differ; ``configure``
        with the differing settings; else ``unchanged`` (or ``error`` when the state could not be read).
    """
    workspace_id = desired.workspace_id
    if observed.error is not None:
        return Step(workspace_id, "error", reason=observed.error)
    if not observed.running:
        return Step(workspace_id, "start", input=desired, task_queue=task_queue)
    fixed = control.fixed_differences(
        desired,
        platform_url=observed.platform_url,
        backend=observed.backend,
        task_queue=observed.task_queue,
        desired_task_queue=task_queue,
    )
    if fixed:
        return Step(workspace_id, "restart", reason="; ".join(fixed))
    if observed.settings is not None:
        changes = control.settings_changes(observed.settings, desired.settings, None)
    else:
        changes = desired.settings.model_dump(mode="json")
    if changes:
        return Step(workspace_id, "configure", changes=changes)
    return Step(workspace_id, "unchanged")


async def observe(client: Client, workspace_id: str, *, timeout: timedelta = control.STATUS_QUERY_TIMEOUT) -> Observed:
    """Read a workspace's connector for :func:`decide`; a failure to read it becomes ``Observed.error``."""
    try:
        found = await control.running_connector(client, workspace_id, timeout=timeout)
    except ConnectorError as err:
        return Observed(running=True, error=str(err))
    if found is None:
        return Observed(running=False)
    status = found.status
    return Observed(
        running=True,
        task_queue=found.task_queue,
        platform_url=status.platform_url,
        # Without the start input the backend is compared by name only.
        backend=found.input.backend if found.input else BackendSpec(name=status.backend),
        settings=status.settings,
    )


async def plan(
    client: Client,
    fleet: Fleet,
    *,
    task_queue: str | None = None,
    prune: bool = False,
    timeout: timedelta = control.STATUS_QUERY_TIMEOUT,
) -> list[Step]:
    """Compare the fleet with what runs; one step per listed workspace, then a ``drain`` per pruned connector.

    Args:
        client: Connected client.
        fleet: The loaded fleet file.
        task_queue: ``--task-queue``: overrides ``[defaults] task_queue`` (not a workspace's own).
        prune: Also drain running connectors this fleet started (memo ``fleet``) on its task queues that the file
            no longer lists.
        timeout: Limit of each describe / status query.

    Returns:
        The steps, listed workspaces in file order, then pruned ones by workspace id.

    Raises:
        ConnectorError: ``prune`` and the visibility list query failed.
    """
    limit = asyncio.Semaphore(control.STATUS_QUERY_CONCURRENCY)

    async def step(desired: ConnectInput) -> Step:
        async with limit:
            observed = await observe(client, desired.workspace_id, timeout=timeout)
        return decide(desired, observed, task_queue=fleet.task_queue_of(desired.workspace_id, task_queue))

    steps = list(await asyncio.gather(*(step(c) for c in fleet.connectors)))
    if prune:
        listed = set(fleet.workspace_ids)
        running = await control.list_connectors(client, task_queues=fleet.all_task_queues(task_queue))
        steps += [
            Step(c.workspace_id, "drain") for c in running if c.fleet == fleet.name and c.workspace_id not in listed
        ]
    return steps


async def apply(
    client: Client,
    steps: Sequence[Step],
    *,
    fleet_name: str,
    task_queue: str = TASK_QUEUE,
    timeout: timedelta = control.CONTROL_TIMEOUT,
) -> list[str | None]:
    """Carry out ``steps`` concurrently (``unchanged``, ``restart`` and ``error`` do nothing).

    Args:
        client: Connected client.
        steps: From :func:`plan`.
        fleet_name: Marked on every started connector (memo ``fleet``), so ``--prune`` knows what the fleet owns.
        task_queue: Where a ``start`` step without its own task queue starts.
        timeout: Limit of each update.

    Returns:
        Per step, in order: None when it succeeded (or had nothing to do), else the one-line error.
    """
    limit = asyncio.Semaphore(control.STATUS_QUERY_CONCURRENCY)
    memo = {control.FLEET_MEMO_KEY: fleet_name}

    async def run(step: Step) -> str | None:
        async with limit:
            try:
                if step.kind == "start" and step.input is not None:
                    queue = step.task_queue or task_queue
                    await control.start_connector(client, step.input, task_queue=queue, memo=memo)
                elif step.kind == "configure":
                    await control.configure(client, step.workspace_id, dict(step.changes), timeout=timeout)
                elif step.kind == "drain":
                    await control.drain_connector(client, step.workspace_id, timeout=timeout)
            except ConnectorError as err:
                return str(err)
        return None

    return list(await asyncio.gather(*(run(s) for s in steps)))
