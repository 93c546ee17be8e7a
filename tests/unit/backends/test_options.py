"""Backend options: durations, one-line errors, and option descriptions."""

from __future__ import annotations

from datetime import timedelta

import pytest

from activities.backends.base import BackendConfigError
from activities.backends.options import (
    BackendOptions,
    Duration,
    OptionInfo,
    describe_options,
    format_duration,
    parse_duration,
    parse_options,
)


class _Options(BackendOptions):
    name: str
    """Who to greet."""
    wait: Duration = timedelta(seconds=30)
    """How long to wait."""
    loud: bool = False
    """Shout."""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("90", timedelta(seconds=90)),
        ("1.5", timedelta(seconds=1.5)),
        (" 2s ", timedelta(seconds=2)),
    ],
)
def test_parse_duration_accepted_forms_parse(text: str, expected: timedelta):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5x", "-1s", "1h30m", "s", "0", "0ms"])
def test_parse_duration_bad_text_raises_value_error(text: str):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("duration", "expected"),
    [
        (timedelta(seconds=60), "60s"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(seconds=1.5), "1500ms"),
        (timedelta(minutes=15), "15m"),
        (timedelta(hours=2), "2h"),
        (timedelta(seconds=601), "601s"),
    ],
)
def test_format_duration_round_trips_through_parse(duration: timedelta, expected: str):
    assert format_duration(duration) == expected
    assert parse_duration(expected) == duration


def test_parse_options_strings_become_typed_values():
    options = parse_options(_Options, {"name": "ada", "wait": "2m", "loud": "yes"}, backend="greet")

    assert options == _Options(name="ada", wait=timedelta(minutes=2), loud=True)


def test_parse_options_every_problem_reported_on_one_line():
    with pytest.raises(BackendConfigError) as caught:
        parse_options(_Options, {"wait": "soon", "loud": "maybe", "colour": "red"}, backend="greet")

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("greet: ")
    assert "missing required option 'name' (-o name=...)" in message
    assert "option 'wait': invalid duration 'soon'" in message
    assert "option 'loud' must be true or false, not 'maybe'" in message
    assert "unknown option 'colour' (known: name, wait, loud)" in message


def test_describe_options_lists_defaults_as_typed_and_help():
    assert describe_options(_Options) == (
        OptionInfo(name="name", required=True, default=None, help="Who to greet."),
        OptionInfo(name="wait", required=False, default="30s", help="How long to wait."),
        OptionInfo(name="loud", required=False, default="false", help="Shout."),
    )
