from __future__ import annotations

import pytest

import provisioner.states
from provisioner.errors import IllegalTransition
from provisioner.states import (
    BOOTS_PROFILE_IMAGE,
    MAY_POSTINSTALL,
    REFINGERPRINTABLE,
    TRANSITIONS,
    NodeEvent,
    NodeState,
    allowed_events,
    apply,
    diagram,
)

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
        (S.FAILED, E.ENROLL, S.ENROLLED),  # a roll (or `node enroll`) puts it back on its image
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
    assert _reachable(S.NEW) == set(NodeState)


def _reachable(start: NodeState) -> set[NodeState]:
    seen = {start}
    frontier = [start]
    while frontier:
        current = frontier.pop()
        for event in allowed_events(current):
            nxt = apply(current, event)
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


# ------------------------------------------------------------------ the docstring's diagram


def _docstring_diagram() -> str:
    """The literal block after the first ``::`` of the module's docstring, dedented."""
    doc = provisioner.states.__doc__
    assert doc is not None and "::\n\n" in doc
    block = []
    for line in doc.split("::\n\n", 1)[1].splitlines():
        if not line.startswith("    "):
            break
        block.append(line.removeprefix("    "))
    return "\n".join(block)


def test_the_docstring_draws_the_table_as_it_is() -> None:
    assert _docstring_diagram() == diagram(), (
        "states.py's docstring no longer draws TRANSITIONS: paste the output of "
        "`python -m provisioner.states` (indented 4 spaces) over its diagram"
    )


def test_the_diagram_draws_every_move_once() -> None:
    drawn: list[tuple[NodeState, NodeEvent, NodeState]] = []
    source = ""
    for line in diagram().splitlines():
        cut = line.index("--")  # the source column (blank: the line above's source)
        shown, event, target = line[:cut].strip(), *line[cut:].split()
        source = shown or source
        assert event.startswith("--") and event.endswith("-->"), line
        states = list(NodeState) if source == "(any state)" else [NodeState(source)]
        drawn += [(state, NodeEvent(event[2:-3]), NodeState(target)) for state in states]
    assert len(drawn) == len(set(drawn))
    assert set(drawn) == {(s, e, target) for (s, e), target in TRANSITIONS.items()}


def test_the_diagram_does_not_depend_on_the_table_order() -> None:
    shuffled = dict(reversed(list(TRANSITIONS.items())))
    drawn = diagram()
    original = dict(TRANSITIONS)
    TRANSITIONS.clear()
    TRANSITIONS.update(shuffled)
    try:
        assert diagram() == drawn
    finally:
        TRANSITIONS.clear()
        TRANSITIONS.update(original)


# ---------------------------------------------------- the groupings mean what they say

GROUPS = {
    "BOOTS_PROFILE_IMAGE": BOOTS_PROFILE_IMAGE,
    "MAY_POSTINSTALL": MAY_POSTINSTALL,
    "REFINGERPRINTABLE": REFINGERPRINTABLE,
}


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_a_group_is_a_frozen_nonempty_set_of_states(name: str) -> None:
    group = GROUPS[name]
    assert isinstance(group, frozenset)
    assert group
    assert all(isinstance(state, NodeState) for state in group)


def test_enrolled_nodes_boot_their_image_until_they_leave_it() -> None:
    assert apply(S.MATCHED, E.ENROLL) in BOOTS_PROFILE_IMAGE
    assert apply(S.LOCAL, E.BOOT_NETWORK) in BOOTS_PROFILE_IMAGE
    assert S.LOCAL not in BOOTS_PROFILE_IMAGE
    for state in BOOTS_PROFILE_IMAGE:
        # a reboot or a profiles reload keeps it on its image; no-match cannot unenrol it
        assert apply(state, E.INVENTORY) in BOOTS_PROFILE_IMAGE
        assert apply(state, E.MATCH) is state
        assert E.NO_MATCH not in allowed_events(state)
        assert apply(state, E.BOOT_LOCAL) is S.LOCAL


def test_post_install_runs_on_enrolled_and_failed_nodes_and_leads_to_serving() -> None:
    assert {s for (s, e) in TRANSITIONS if e is E.INSTALLED} == MAY_POSTINSTALL
    assert BOOTS_PROFILE_IMAGE < MAY_POSTINSTALL
    for state in MAY_POSTINSTALL:
        assert apply(state, E.INSTALLED) in BOOTS_PROFILE_IMAGE
        assert apply(state, E.SMOKE_PASS) is S.SERVING
        assert S.SERVING in _reachable(state)


def test_refingerprintable_nodes_are_the_ones_a_fingerprint_moves() -> None:
    assert {s for (s, e) in TRANSITIONS if e is E.NO_MATCH} == REFINGERPRINTABLE
    assert {s for (s, e) in TRANSITIONS if e is E.MATCH} == REFINGERPRINTABLE | BOOTS_PROFILE_IMAGE
    assert not REFINGERPRINTABLE & BOOTS_PROFILE_IMAGE
    for state in REFINGERPRINTABLE:
        assert apply(state, E.MATCH) in {S.MATCHED, S.ENROLLED}
        assert apply(state, E.NO_MATCH) is S.UNMATCHED
