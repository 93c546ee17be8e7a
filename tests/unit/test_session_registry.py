"""``SessionRegistry``: what a worker's lease lists (``activities.lease``), with an injected clock."""

from __future__ import annotations

from activities.lease import HELD_LIMIT, RECENT_S, SessionRegistry
from activities.messages import HeldSession


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def session(workflow_id: str, activity_id: str = "1") -> HeldSession:
    return HeldSession(workflow_id=workflow_id, run_id="r", activity_id=activity_id)


def test_lists_running_sessions_and_ended_ones_for_a_while() -> None:
    clock = Clock()
    registry = SessionRegistry(clock)
    a = registry.started(session("connect-a"))
    registry.started(session("connect-b"))
    assert [s.workflow_id for s in registry.held()] == ["connect-a", "connect-b"]

    registry.ended(a)
    clock.now += RECENT_S
    assert [s.workflow_id for s in registry.held()] == ["connect-b", "connect-a"]
    clock.now += 1
    assert [s.workflow_id for s in registry.held()] == ["connect-b"]


def test_one_entry_per_workflow_the_running_session_first() -> None:
    registry = SessionRegistry(Clock())
    registry.ended(registry.started(session("connect-a", "1")))
    registry.started(session("connect-a", "5"))
    assert registry.held() == [session("connect-a", "5")]


def test_a_session_ending_twice_or_unknown_changes_nothing() -> None:
    registry = SessionRegistry(Clock())
    key = registry.started(session("connect-a"))
    registry.ended(key)
    registry.ended(key)
    registry.ended(("connect-x", "r", "9"))
    assert registry.held() == [session("connect-a")]


def test_the_list_is_bounded() -> None:
    registry = SessionRegistry(Clock())
    for n in range(HELD_LIMIT + 10):
        registry.started(session(f"connect-{n}"))
    held = registry.held()
    assert len(held) == HELD_LIMIT
    assert held[0].workflow_id == "connect-0"
