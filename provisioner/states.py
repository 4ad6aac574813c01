"""The node state machine: every state, every allowed move, in one table.

Every move of ``TRANSITIONS`` below (drawn from the table by :func:`diagram`; after
changing the table, paste ``python -m provisioner.states`` here)::

    (any state)  --fail-->            failed
                 --forget-->          new
                 --power-cycle-->     enrolling
    new          --inventory-->       discovered
    discovered   --inventory-->       discovered
                 --match-->           matched
                 --no-match-->        unmatched
                 --enroll-->          enrolled
                 --boot-local-->      local
    matched      --inventory-->       discovered
                 --match-->           matched
                 --no-match-->        unmatched
                 --enroll-->          enrolled
                 --boot-local-->      local
    unmatched    --inventory-->       discovered
                 --match-->           matched
                 --no-match-->        unmatched
    enrolling    --inventory-->       enrolling
                 --match-->           enrolled
                 --no-match-->        unmatched
                 --enroll-->          enrolled
                 --hold-->            matched
    enrolled     --inventory-->       enrolled
                 --match-->           enrolled
                 --enroll-->          enrolled
                 --boot-local-->      local
                 --installed-->       enrolled
                 --smoke-pass-->      serving
                 --smoke-degraded-->  degraded
                 --release-->         enrolled
    serving      --inventory-->       enrolled
                 --match-->           serving
                 --boot-local-->      local
                 --installed-->       serving
                 --smoke-pass-->      serving
                 --smoke-degraded-->  degraded
                 --release-->         enrolled
    degraded     --inventory-->       enrolled
                 --match-->           degraded
                 --boot-local-->      local
                 --installed-->       degraded
                 --smoke-pass-->      serving
                 --smoke-degraded-->  degraded
                 --release-->         enrolled
    local        --inventory-->       local
                 --boot-local-->      local
                 --boot-network-->    enrolled
    failed       --inventory-->       discovered
                 --enroll-->          enrolled
                 --installed-->       enrolled
                 --smoke-pass-->      serving
                 --smoke-degraded-->  degraded
                 --release-->         enrolled

A node is ``new`` from its first DHCP packet until its agent reports an inventory; the
inventory is then fingerprinted against the profiles at once (``matched`` with a profile,
or ``unmatched``). Profiles reloaded re-fingerprint every node: those not enrolled yet
move, the others keep their state.
``forget`` from any state returns it to ``new`` (it is rediscovered at its next boot); a
``failed`` node's next good boot (an inventory) repairs it; ``enroll`` gives a failed
node its profile's image again (what a rolling upgrade does before rebooting one).

``serving`` and ``degraded`` are enrolled nodes whose cluster's smoke test passed (or
passed below a floor); post-install's success is ``installed`` (it repairs a node that
failed a step), and a reboot (a new inventory) makes them ``enrolled`` again: their root
is fresh, post-install runs again.

``enrolling`` is a node that `provisioner enroll --power-cycle` powered on or cycled: it
boots discovery, reports and is enrolled as soon as a profile matches (no separate
``enroll``). If it never gets that far in time, ``enroll --wait`` fails it (``fail``,
naming the last boot step seen); its next good boot repairs it.

The groupings of states that code elsewhere tests a node against (which states boot
their profile's image, may run post-install, are re-fingerprinted) are named once, next
to the table: :data:`BOOTS_PROFILE_IMAGE`, :data:`MAY_POSTINSTALL`,
:data:`REFINGERPRINTABLE`.
"""

from __future__ import annotations

from enum import StrEnum

from provisioner.errors import IllegalTransition


class NodeState(StrEnum):
    NEW = "new"
    DISCOVERED = "discovered"
    MATCHED = "matched"
    UNMATCHED = "unmatched"
    ENROLLING = "enrolling"  # power-cycled to enroll: boots discovery, enrolled on a match
    ENROLLED = "enrolled"
    SERVING = "serving"  # enrolled, post-installed, and its cluster's smoke passed
    DEGRADED = "degraded"  # serving, but a smoke check is below its floor
    LOCAL = "local"
    FAILED = "failed"


class NodeEvent(StrEnum):
    INVENTORY = "inventory"  # the agent reported the node's hardware
    MATCH = "match"  # fingerprinting found its profile
    NO_MATCH = "no-match"  # no profile (or a conflict between two)
    ENROLL = "enroll"  # the node is given a profile and image
    BOOT_LOCAL = "boot-local"  # boot from its own disk from now on
    BOOT_NETWORK = "boot-network"  # back to network boot of its image
    FAIL = "fail"  # a step failed; the node shows which
    FORGET = "forget"  # start over: rediscover at next boot
    POWER_CYCLE = "power-cycle"  # powered on or cycled by `enroll` to (re)enroll it
    INSTALLED = "installed"  # post-install finished every step (a failed node is repaired)
    SMOKE_PASS = "smoke-pass"  # its cluster's smoke test passed
    SMOKE_DEGRADED = "smoke-degraded"  # it serves, below a floor
    RELEASE = "release"  # its cluster was removed: its units are gone, it serves nothing
    HOLD = "hold"  # matched while enrolling, its enrollment refused (a kernel too old)


S, E = NodeState, NodeEvent

# The groupings of states, each said once here (tests/unit/test_states.py checks each
# against TRANSITIONS). Use these; never spell a group out where it is used.
# Enrolled (serving and degraded nodes too): they boot their profile's image.
BOOTS_PROFILE_IMAGE = frozenset({S.ENROLLED, S.SERVING, S.DEGRADED})
# Post-install may run on these (again), and smoke judge them: enrolled or failed nodes.
MAY_POSTINSTALL = frozenset({*BOOTS_PROFILE_IMAGE, S.FAILED})
# Not enrolled yet: each fingerprint (inventory, profiles reload) moves them to matched or
# unmatched (enrolling: enrolled on a match); other states keep theirs.
REFINGERPRINTABLE = frozenset({S.DISCOVERED, S.MATCHED, S.UNMATCHED, S.ENROLLING})

TRANSITIONS: dict[tuple[NodeState, NodeEvent], NodeState] = {
    (S.NEW, E.INVENTORY): S.DISCOVERED,
    (S.DISCOVERED, E.INVENTORY): S.DISCOVERED,
    (S.ENROLLED, E.INVENTORY): S.ENROLLED,
    (S.LOCAL, E.INVENTORY): S.LOCAL,
    (S.FAILED, E.INVENTORY): S.DISCOVERED,
    (S.MATCHED, E.INVENTORY): S.DISCOVERED,
    (S.UNMATCHED, E.INVENTORY): S.DISCOVERED,
    (S.DISCOVERED, E.MATCH): S.MATCHED,
    (S.DISCOVERED, E.NO_MATCH): S.UNMATCHED,
    (S.MATCHED, E.MATCH): S.MATCHED,
    (S.MATCHED, E.NO_MATCH): S.UNMATCHED,
    (S.UNMATCHED, E.MATCH): S.MATCHED,
    (S.UNMATCHED, E.NO_MATCH): S.UNMATCHED,
    (S.ENROLLED, E.MATCH): S.ENROLLED,
    (S.DISCOVERED, E.ENROLL): S.ENROLLED,
    (S.MATCHED, E.ENROLL): S.ENROLLED,
    (S.ENROLLED, E.ENROLL): S.ENROLLED,
    (S.DISCOVERED, E.BOOT_LOCAL): S.LOCAL,
    (S.MATCHED, E.BOOT_LOCAL): S.LOCAL,
    (S.ENROLLED, E.BOOT_LOCAL): S.LOCAL,
    (S.LOCAL, E.BOOT_LOCAL): S.LOCAL,
    (S.LOCAL, E.BOOT_NETWORK): S.ENROLLED,
    # a rolling upgrade (or its rollback) takes a failed member back onto an image
    (S.FAILED, E.ENROLL): S.ENROLLED,
    (S.ENROLLING, E.INVENTORY): S.ENROLLING,
    (S.ENROLLING, E.MATCH): S.ENROLLED,
    (S.ENROLLING, E.NO_MATCH): S.UNMATCHED,
    (S.ENROLLING, E.ENROLL): S.ENROLLED,
    (S.ENROLLING, E.HOLD): S.MATCHED,
    **{(state, E.POWER_CYCLE): S.ENROLLING for state in NodeState},
    # post-install and smoke (serving and degraded nodes are enrolled nodes too)
    (S.ENROLLED, E.INSTALLED): S.ENROLLED,
    (S.FAILED, E.INSTALLED): S.ENROLLED,
    (S.SERVING, E.INSTALLED): S.SERVING,
    (S.DEGRADED, E.INSTALLED): S.DEGRADED,
    **{(state, E.SMOKE_PASS): S.SERVING for state in MAY_POSTINSTALL},
    **{(state, E.SMOKE_DEGRADED): S.DEGRADED for state in MAY_POSTINSTALL},
    **{(state, E.RELEASE): S.ENROLLED for state in MAY_POSTINSTALL},
    (S.SERVING, E.INVENTORY): S.ENROLLED,  # rebooted: a fresh root, post-install again
    (S.DEGRADED, E.INVENTORY): S.ENROLLED,
    (S.SERVING, E.MATCH): S.SERVING,
    (S.DEGRADED, E.MATCH): S.DEGRADED,
    (S.SERVING, E.BOOT_LOCAL): S.LOCAL,
    (S.DEGRADED, E.BOOT_LOCAL): S.LOCAL,
    **{(state, E.FAIL): S.FAILED for state in NodeState},
    **{(state, E.FORGET): S.NEW for state in NodeState},
}


def apply(state: NodeState, event: NodeEvent) -> NodeState:
    """The state after ``event``; raises IllegalTransition if the table forbids it."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        allowed = sorted(e.value for e in allowed_events(state))
        raise IllegalTransition(
            f"a {state.value} node cannot take '{event.value}' (allowed: {', '.join(allowed)})"
        ) from None


def allowed_events(state: NodeState) -> list[NodeEvent]:
    """The events ``state`` takes, in NodeEvent's order."""
    return [e for e in NodeEvent if (state, e) in TRANSITIONS]


_ANY_STATE = "(any state)"


def diagram() -> str:
    """TRANSITIONS drawn as text: one ``state --event--> state`` line per move.

    Events every state takes to one same state are drawn once, from ``(any state)``; the
    rest are grouped by source state, states and events in their enums' order. The
    module's docstring holds this drawing (a test keeps it current):
    ``python -m provisioner.states`` prints it.
    """
    anywhere = [
        event
        for event in NodeEvent
        if all((state, event) in TRANSITIONS for state in NodeState)
        and len({TRANSITIONS[(state, event)] for state in NodeState}) == 1
    ]
    rows = [(_ANY_STATE, event, TRANSITIONS[(S.NEW, event)]) for event in anywhere]
    rows += [
        (state.value, event, TRANSITIONS[(state, event)])
        for state in NodeState
        for event in allowed_events(state)
        if event not in anywhere
    ]
    source_width = max(len(source) for source, _, _ in rows)
    arrow_width = max(len(f"--{event.value}-->") for _, event, _ in rows)
    lines, previous = [], None
    for source, event, target in rows:
        shown = source if source != previous else ""
        arrow = f"--{event.value}-->"
        lines.append(f"{shown:<{source_width}}  {arrow:<{arrow_width}}  {target.value}")
        previous = source
    return "\n".join(lines)


if __name__ == "__main__":
    print(diagram())
