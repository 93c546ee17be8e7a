"""The backend registry: built-ins, plugins from the ``molecule_connect.backends`` entry points, lookup.

A plugin distribution registers a backend in its ``pyproject.toml``::

    [project.entry-points."molecule_connect.backends"]
    my-agent = "my_package.backend:MyAgentBackend"

The entry point resolves to a factory ``(options: Mapping[str, str]) -> Backend``, or a class with that
constructor. For ``available_backends()`` it may also carry ``summary: str``, ``options_model`` (a
pydantic model whose fields are its options) and ``child_env_info`` (a
:class:`~activities.backends.process.environment.ChildEnvInfo`, when it runs a command), as the built-ins do; all are
optional. Built-in names win over
plugins, and among plugins with one name the first on ``sys.path`` wins; the losers are logged and ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

from pydantic import BaseModel, ConfigDict

from activities.backends.base import Backend, BackendConfigError
from activities.backends.claude_code import ClaudeCodeBackend
from activities.backends.echo import EchoBackend
from activities.backends.exec import ExecBackend
from activities.backends.http import HttpBackend
from activities.backends.options import OptionInfo, describe_options
from activities.backends.process import ChildEnvInfo

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "molecule_connect.backends"
"""The entry-point group third-party backends register in."""

BackendFactory = Callable[[Mapping[str, str]], Backend]
"""What a backend name resolves to: options (``-o`` strings) in, a ready backend out."""

BUILTIN_BACKENDS: Mapping[str, BackendFactory] = {
    "echo": EchoBackend,
    "exec": ExecBackend,
    "claude-code": ClaudeCodeBackend,
    "http": HttpBackend,
}
"""Backends shipped with molecule-connect, in the order ``available_backends()`` lists them."""


class BackendInfo(BaseModel):
    """What ``molecule-connect backends`` shows about one backend."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    name: str
    """The name given to ``--backend``."""
    summary: str
    """One line on what it does."""
    options: tuple[OptionInfo, ...] = ()
    """The ``-o`` options it accepts, with defaults and help; empty when a plugin does not declare them."""
    child_env: ChildEnvInfo | None = None
    """Which variables reach the command it runs; ``None`` when it runs none (or a plugin does not say)."""
    origin: str
    """``built-in``, or the plugin's entry point (``my_package.backend:MyAgentBackend from my-dist 1.0``)."""
    load_error: str | None = None
    """Why a plugin could not be loaded; ``None`` when it loaded."""


def create_backend(name: str, options: Mapping[str, str]) -> Backend:
    """Build a backend from its name and ``-o`` options.

    Args:
        name: A built-in name (``echo``, ``exec``, ``claude-code``, ``http``) or one registered in the
            ``molecule_connect.backends`` entry-point group.
        options: Option keys to string values; each backend validates its own.

    Returns:
        A ready backend. Callers cache it per (name, options) and share it between dispatches.

    Raises:
        BackendConfigError: Unknown name (the message lists the known ones), a plugin that cannot be loaded
            or does not produce a backend, or options the backend rejects.
    """
    builtin = BUILTIN_BACKENDS.get(name)
    if builtin is not None:
        return builtin(options)
    plugins = _plugin_entry_points()
    entry_point = plugins.get(name)
    if entry_point is None:
        choices = ", ".join([*BUILTIN_BACKENDS, *sorted(plugins)])
        raise BackendConfigError(f"unknown backend {name!r}: choose one of {choices}")
    factory = _load(entry_point)
    try:
        backend = factory(options)
    except BackendConfigError:
        raise
    except Exception as err:
        # A plugin may validate with its own exceptions; for the worker any failure here means "cannot run".
        raise BackendConfigError(f"backend {name!r} ({entry_point.value}): {type(err).__name__}: {err}") from err
    if not (callable(getattr(backend, "handle", None)) and callable(getattr(backend, "close", None))):
        raise BackendConfigError(
            f"backend {name!r} ({entry_point.value}) made a {type(backend).__name__}, which lacks handle()/close()"
        )
    return backend


def available_backends() -> dict[str, BackendInfo]:
    """Describe every backend this worker can run: built-ins first, then plugins by name.

    Plugins are imported to read their summary and options; one that fails to import is still listed, with
    ``load_error`` set, rather than hiding the others.

    Returns:
        Backend name to its description.
    """
    infos = {name: _describe(name, factory, "built-in") for name, factory in BUILTIN_BACKENDS.items()}
    for name, entry_point in sorted(_plugin_entry_points().items()):
        origin = _origin(entry_point)
        try:
            factory = _load(entry_point)
        except BackendConfigError as err:
            infos[name] = BackendInfo(name=name, summary="", origin=origin, load_error=str(err))
            continue
        infos[name] = _describe(name, factory, origin)
    return infos


def _plugin_entry_points() -> dict[str, metadata.EntryPoint]:
    """Installed entry points of the group by name, minus those shadowing a built-in or an earlier plugin."""
    found: dict[str, metadata.EntryPoint] = {}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        name = entry_point.name
        if name in BUILTIN_BACKENDS:
            logger.warning("backend plugin %s ignored: %r is a built-in backend", _origin(entry_point), name)
        elif name not in found:
            found[name] = entry_point
        elif found[name].value != entry_point.value:
            # The same distribution seen twice on sys.path is no conflict; two different targets are.
            logger.warning(
                "backend plugin %s ignored: %r is taken by %s", _origin(entry_point), name, found[name].value
            )
    return found


def _load(entry_point: metadata.EntryPoint) -> BackendFactory:
    """Import an entry point's target.

    Raises:
        BackendConfigError: The import fails (any exception from the plugin's module) or the target is not
            callable.
    """
    try:
        target = entry_point.load()
    except Exception as err:
        raise BackendConfigError(
            f"backend {entry_point.name!r}: cannot load {entry_point.value}: {type(err).__name__}: {err}"
        ) from err
    if not callable(target):
        raise BackendConfigError(f"backend {entry_point.name!r}: {entry_point.value} is not a factory or class")
    factory: BackendFactory = target
    return factory


def _origin(entry_point: metadata.EntryPoint) -> str:
    """Where a plugin comes from: its target and, when known, its distribution."""
    dist = entry_point.dist
    return f"{entry_point.value} from {dist.name} {dist.version}" if dist is not None else entry_point.value


def _describe(name: str, factory: Any, origin: str) -> BackendInfo:
    """Read a factory's optional ``summary`` (else its docstring's first line), options and command environment."""
    summary = getattr(factory, "summary", None)
    if not isinstance(summary, str):
        doc = (getattr(factory, "__doc__", None) or "").strip()
        summary = doc.splitlines()[0] if doc else ""
    model = getattr(factory, "options_model", None)
    options = describe_options(model) if isinstance(model, type) and issubclass(model, BaseModel) else ()
    child_env = getattr(factory, "child_env_info", None)
    if not isinstance(child_env, ChildEnvInfo):
        child_env = None
    return BackendInfo(name=name, summary=summary, options=options, child_env=child_env, origin=origin)
