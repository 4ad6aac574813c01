from __future__ import annotations

import pytest

from provisioner.errors import IllegalTransition
from provisioner.states import TRANSITIONS, NodeEvent, NodeState, allowed_events, apply

S, E = NodeState, NodeEvent


@pytest.mark.parametrize(
    ("state", "event", "expected"),
    [
        (S.NEW, E.INVENTORY, S.DISCOVERED),
        (S.DISCOVERED, E.INVENTORY, S.DISCOVERED),
        (S.FAILED, E.INVENTORY, S.DISCOVERED),
        (S.ENROLLED, E.INVENTORY, S.ENROLLED),
        (S.DISCOVERED, E.ENROLL, S.ENROLLED),
        (S.ENROLLED, E.BOOT_LOCAL, S.LOCAL),
        (S.LOCAL, E.BOOT_NETWORK, S.ENROLLED),
        (S.ENROLLED, E.FAIL, S.FAILED),
        (S.LOCAL, E.FORGET, S.NEW),
        # enroll --power-cycle: from anything, then enrolled as soon as a profile matches
        (S.NEW, E.POWER_CYCLE, S.ENROLLING),
        (S.ENROLLED, E.POWER_CYCLE, S.ENROLLING),
        (S.FAILED, E.POWER_CYCLE, S.ENROLLING),
        (S.ENROLLING, E.POWER_CYCLE, S.ENROLLING),
        (S.ENROLLING, E.INVENTORY, S.ENROLLING),
        (S.ENROLLING, E.MATCH, S.ENROLLED),
        (S.ENROLLING, E.NO_MATCH, S.UNMATCHED),
        (S.ENROLLING, E.FAIL, S.FAILED),
    ],
)
def test_allowed_moves(state: NodeState, event: NodeEvent, expected: NodeState) -> None:
    assert apply(state, event) is expected


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.NEW, E.ENROLL),  # no inventory, no profile: cannot enrol
        (S.NEW, E.BOOT_LOCAL),
        (S.FAILED, E.ENROLL),
        (S.DISCOVERED, E.BOOT_NETWORK),
        (S.ENROLLING, E.BOOT_LOCAL),
    ],
)
def test_illegal_moves_raise_and_name_the_allowed_ones(state: NodeState, event: NodeEvent) -> None:
    with pytest.raises(IllegalTransition) as info:
        apply(state, event)
    assert state.value in str(info.value)
    assert "allowed" in str(info.value)


def test_every_state_can_fail_and_be_forgotten() -> None:
    for state in NodeState:
        assert E.FAIL in allowed_events(state)
        assert TRANSITIONS[(state, E.FORGET)] is S.NEW


def test_every_state_is_reachable_from_new() -> None:
    seen = {S.NEW}
    frontier = [S.NEW]
    while frontier:
        current = frontier.pop()
        for event in allowed_events(current):
            nxt = apply(current, event)
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(NodeState)
