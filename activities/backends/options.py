"""Backend options: declared once per backend as a pydantic model, typed by users as ``-o key=value`` strings.

Each backend module declares one :class:`BackendOptions` subclass whose fields are its options: the field type
parses the string, the default is the default, and the field docstring is the help text. :func:`parse_options`
turns a ``{key: value}`` string mapping into that model and every validation failure into one
:class:`~activities.backends.base.BackendConfigError` line (``exec: unknown option 'foo' (known: cmd, ...)``);
:func:`describe_options` lists the fields for ``available_backends()``.

Options never hold secrets themselves (docs/architecture.md §3): an option that needs one names an environment variable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, ValidationError
from pydantic_core import ErrorDetails

from activities.backends.base import BackendConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> timedelta:
    """Parse a duration as users type it: ``500ms``, ``30s``, ``5m``, ``1h``, or bare seconds (``1.5``).

    Args:
        value: The text; one number and an optional unit, no sign.

    Returns:
        The duration, always greater than zero.

    Raises:
        ValueError: The text is not a duration, or it is zero.
    """
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"invalid duration {value!r}: use e.g. 500ms, 30s, 5m, 1h or bare seconds")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"invalid duration {value!r}: must be greater than zero")
    return timedelta(seconds=seconds)


def format_duration(duration: timedelta) -> str:
    """Format a duration the way :func:`parse_duration` reads it and people say it.

    Seconds below ten minutes (``60s``, ``90s``), then whole hours or minutes when exact (``1h``, ``15m``),
    and milliseconds when there is a fraction of a second (``500ms``, ``1500ms``).

    Args:
        duration: Any non-negative duration; sub-millisecond parts are rounded to the millisecond.

    Returns:
        The text, e.g. ``60s``.
    """
    millis = round(duration.total_seconds() * 1000)
    if millis % 1000:
        return f"{millis}ms"
    seconds = millis // 1000
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds >= 600 and seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def _duration_from_option(value: Any) -> Any:
    """Parse option strings; pass anything else (a ``timedelta`` given in code) to pydantic unchanged."""
    return parse_duration(value) if isinstance(value, str) else value


Duration = Annotated[timedelta, BeforeValidator(_duration_from_option), PlainSerializer(format_duration)]
"""An option holding a duration: read by :func:`parse_duration`, written back by :func:`format_duration`."""


class BackendOptions(BaseModel):
    """Base of every backend's options model: frozen, unknown keys rejected, field docstrings as help text."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class OptionInfo(BaseModel):
    """One option a backend accepts, as ``molecule-connect backends`` shows it."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    name: str
    """The key in ``-o name=value``."""
    required: bool
    """Whether the backend refuses to start without it."""
    default: str | None
    """The default as it would be typed (``60s``, ``true``); ``None`` when required or unset by default."""
    help: str
    """One or two sentences from the field's docstring."""


OptionsT = TypeVar("OptionsT", bound=BaseModel)


def parse_options(model: type[OptionsT], options: Mapping[str, str], *, backend: str) -> OptionsT:
    """Parse ``-o`` strings into a backend's options model.

    Args:
        model: The backend's options model (usually a :class:`BackendOptions` subclass).
        options: Option keys to string values, as given on the command line or in ``ConnectInput``.
        backend: The backend name that prefixes every error message.

    Returns:
        The validated, frozen options.

    Raises:
        BackendConfigError: An unknown key, a missing required key, or a value that does not parse; the
            message names every problem on one line, e.g. ``exec: unknown option 'foo' (known: cmd, ...)``.
    """
    try:
        return model.model_validate(dict(options))
    except ValidationError as err:
        known = ", ".join(model.model_fields)
        problems = "; ".join(_describe_error(error, known) for error in err.errors())
        # pydantic's own text repeats the model name and links to its docs; the one line above says it all.
        raise BackendConfigError(f"{backend}: {problems}") from None


def _describe_error(error: ErrorDetails, known: str) -> str:
    """One validation error as a phrase a user can act on."""
    name = str(error["loc"][0]) if error["loc"] else ""
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown option {name!r} (known: {known})"
    if kind == "missing":
        return f"missing required option {name!r} (-o {name}=...)"
    if kind in ("bool_parsing", "bool_type"):
        return f"option {name!r} must be true or false, not {error['input']!r}"
    cause = error.get("ctx", {}).get("error")
    message = str(cause) if isinstance(cause, Exception) else error["msg"]
    return f"option {name!r}: {message}" if name else message


def describe_options(model: type[BaseModel]) -> tuple[OptionInfo, ...]:
    """List the options of a backend's options model, in declaration order.

    Args:
        model: A pydantic model whose fields are the options (a :class:`BackendOptions` subclass, or a
            third-party backend's own model).

    Returns:
        One :class:`OptionInfo` per field; the help is the field docstring or ``Field(description=...)``.
    """
    infos = []
    for name, field in model.model_fields.items():
        required = field.is_required()
        default = None if required else _typed(field.get_default(call_default_factory=True))
        infos.append(OptionInfo(name=name, required=required, default=default, help=field.description or ""))
    return tuple(infos)


def _typed(value: Any) -> str | None:
    """A default value as a user would type it after ``-o name=``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return format_duration(value)
    return str(value)
