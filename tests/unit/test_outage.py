"""BackendHealth: a poison message is dead-lettered, failures across messages mean the backend is down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from workflows.outage import PROBE_LADDER_S, BackendHealth

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_failed_one_message_alone_retries_then_dead_letters() -> None:
    health = BackendHealth()
    assert health.failed("r1", "boom", at(0), attempt=1, max_attempts=3) == "retry"
    assert health.failed("r1", "boom", at(1), attempt=2, max_attempts=3) == "retry"
    assert health.failed("r1", "boom", at(3), attempt=3, max_attempts=3) == "dead_letter"
    assert not health.down


def test_failed_two_messages_in_a_row_is_an_outage_holding_both() -> None:
    health = BackendHealth()
    assert health.failed("r1", "boom", at(0), attempt=1, max_attempts=5) == "retry"
    assert health.failed("r2", "boom", at(1), attempt=1, max_attempts=5) == "hold"
    assert health.down and health.outage is not None
    assert health.outage.held == ["r1", "r2"]
    assert health.error_rate == 1.0
    assert health.probe_due_in(at(1)) == timedelta(seconds=PROBE_LADDER_S[0])


def test_failed_with_success_between_is_not_an_outage() -> None:
    """A message failing while others succeed is the message: the success clears the streak."""
    health = BackendHealth()
    health.failed("r1", "boom", at(0), attempt=1, max_attempts=2)
    health.succeeded(at(1))
    assert health.failed("r2", "boom", at(2), attempt=1, max_attempts=2) == "retry"
    assert health.failed("r2", "boom", at(3), attempt=2, max_attempts=2) == "dead_letter"
    assert not health.down


def test_failed_probes_climb_the_ladder_and_stay_on_its_last_rung() -> None:
    health = BackendHealth()
    health.failed("r1", "boom", at(0), attempt=1, max_attempts=5)
    health.failed("r2", "boom", at(0), attempt=1, max_attempts=5)
    delays = []
    for n in range(len(PROBE_LADDER_S) + 2):
        assert health.failed("r3", "still down", at(100 * n), attempt=1, max_attempts=5) == "hold"
        delays.append(health.probe_due_in(at(100 * n)).total_seconds())
    assert delays == [*PROBE_LADDER_S[1:], PROBE_LADDER_S[-1], PROBE_LADDER_S[-1], PROBE_LADDER_S[-1]]
    assert health.outage is not None and health.outage.probes == len(PROBE_LADDER_S) + 2


def test_succeeded_ends_the_outage() -> None:
    health = BackendHealth()
    health.failed("r1", "boom", at(0), attempt=1, max_attempts=5)
    health.failed("r2", "boom", at(0), attempt=1, max_attempts=5)
    assert health.succeeded(at(5)) is True
    assert not health.down and health.failing == []
    assert health.succeeded(at(6)) is False


def test_choose_probe_prefers_a_message_that_has_not_failed() -> None:
    health = BackendHealth()
    health.failed("r1", "boom", at(0), attempt=1, max_attempts=5)
    health.failed("r2", "boom", at(0), attempt=1, max_attempts=5)
    assert health.choose_probe(["r1", "r2", "r3"]) == "r3"
    assert health.choose_probe(["r1", "r2"]) == "r1"
    assert health.choose_probe([]) is None
    health.succeeded(at(1))
    assert health.choose_probe(["r3"]) is None


def test_error_rate_counts_recent_outcomes() -> None:
    health = BackendHealth()
    for n in range(8):
        health.succeeded(at(n))
    health.failed("r1", "boom", at(9), attempt=1, max_attempts=5)
    health.failed("r1", "boom", at(10), attempt=2, max_attempts=5)
    assert health.error_rate == 0.2


def test_health_round_trips_through_json_for_continue_as_new() -> None:
    health = BackendHealth()
    health.failed("r1", "boom", at(0), attempt=1, max_attempts=5)
    health.failed("r2", "boom", at(0), attempt=1, max_attempts=5)
    copy = BackendHealth.model_validate_json(health.model_dump_json())
    assert copy == health and copy.down
