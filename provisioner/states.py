"""The node state machine: every state, every allowed move, in one table.

::

    new ──inventory──> discovered ──enroll──> enrolled ──boot-local──> local
     │                    │  ^                   │  ^                    │
     │                    │  └──inventory────────┘  └──boot-network──────┘
     └──────fail──────> failed <──fail── (any state)
                          └──inventory──> discovered   (a good boot repairs)

A node is ``new`` from its first DHCP packet until its agent reports an inventory.
``forget`` from any state returns it to ``new`` (it is rediscovered at its next boot).
"""

from __future__ import annotations

from enum import StrEnum

from provisioner.errors import IllegalTransition


class NodeState(StrEnum):
    NEW = "new"
    DISCOVERED = "discovered"
    ENROLLED = "enrolled"
    LOCAL = "local"
    FAILED = "failed"


class NodeEvent(StrEnum):
    INVENTORY = "inventory"  # the agent reported the node's hardware
    ENROLL = "enroll"  # the node is given a profile and image
    BOOT_LOCAL = "boot-local"  # boot from its own disk from now on
    BOOT_NETWORK = "boot-network"  # back to network boot of its image
    FAIL = "fail"  # a step failed; the node shows which
    FORGET = "forget"  # start over: rediscover at next boot


S, E = NodeState, NodeEvent

TRANSITIONS: dict[tuple[NodeState, NodeEvent], NodeState] = {
    (S.NEW, E.INVENTORY): S.DISCOVERED,
    (S.DISCOVERED, E.INVENTORY): S.DISCOVERED,
    (S.ENROLLED, E.INVENTORY): S.ENROLLED,
    (S.LOCAL, E.INVENTORY): S.LOCAL,
    (S.FAILED, E.INVENTORY): S.DISCOVERED,
    (S.DISCOVERED, E.ENROLL): S.ENROLLED,
    (S.ENROLLED, E.ENROLL): S.ENROLLED,
    (S.DISCOVERED, E.BOOT_LOCAL): S.LOCAL,
    (S.ENROLLED, E.BOOT_LOCAL): S.LOCAL,
    (S.LOCAL, E.BOOT_LOCAL): S.LOCAL,
    (S.LOCAL, E.BOOT_NETWORK): S.ENROLLED,
    **{(state, E.FAIL): S.FAILED for state in NodeState},
    **{(state, E.FORGET): S.NEW for state in NodeState},
}


def apply(state: NodeState, event: NodeEvent) -> NodeState:
    """The state after ``event``; raises IllegalTransition if the table forbids it."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        allowed = sorted(e.value for (s, e) in TRANSITIONS if s is state)
        raise IllegalTransition(
            f"a {state.value} node cannot take '{event.value}' (allowed: {', '.join(allowed)})"
        ) from None


def allowed_events(state: NodeState) -> list[NodeEvent]:
    return [e for (s, e) in TRANSITIONS if s is state]
