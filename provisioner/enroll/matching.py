"""Enrollment: an inventory arrives -> the node is fingerprinted, named and matched.

The registry keeps what the agent sent; this module turns it into an inventory, asks the
pure fingerprinting for the best profile, and records the outcome: the node's profile, a
hostname from the cluster's pattern, the state (``matched`` or ``unmatched``) and a
``profile`` event on its timeline with the nearest candidates. ``reload`` reads the
profiles again and re-fingerprints every node, keeping the last good set if the new one
has errors.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from provisioner.enroll.fingerprint import Match, fingerprint
from provisioner.profiles import ProfileSet, load_profiles
from provisioner.records import EventKind, Node
from provisioner.registry import Registry
from provisioner.states import BOOTS_PROFILE_IMAGE, REFINGERPRINTABLE, NodeEvent, NodeState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    mac: str
    hostname: str | None
    before: str | None
    after: str | None

    def as_dict(self) -> dict[str, str | None]:
        return self.__dict__.copy()


class Enroller:
    def __init__(
        self,
        registry: Registry,
        profiles_dir: Path,
        hostname_pattern: str,
        *,
        auto_enroll: bool = False,
    ):
        self.registry = registry
        self.profiles_dir = profiles_dir
        self.hostname_pattern = hostname_pattern
        self.auto_enroll = auto_enroll  # matched -> enrolled at once (it boots its image next)
        self.profiles: ProfileSet = load_profiles(profiles_dir)  # bad set: refuse to start
        self._lock = threading.Lock()

    def on_inventory(self, mac: str) -> Node:
        """Fingerprint the node whose inventory was just stored; returns it updated."""
        with self._lock:
            node = self.registry.assign_hostname(mac, self.hostname_pattern)
            node = self._fingerprint(node)
            if self.auto_enroll and node.state is NodeState.MATCHED:
                node = self.registry.transition(mac, NodeEvent.ENROLL, reason="auto-enroll")
            return node

    def reload(self) -> list[Change]:
        """Read the profiles again (raises ProfileError, keeping the old set, if bad)."""
        with self._lock:
            self.profiles = load_profiles(self.profiles_dir)
            changes = []
            for mac in self.registry.macs_with_inventory():
                node = self.registry.node(mac)
                if node is None:
                    continue
                after = self._fingerprint(node)
                if after.profile != node.profile:
                    changes.append(Change(mac, after.hostname, node.profile, after.profile))
            log.info("profiles reloaded: %d nodes changed profile", len(changes))
            return changes

    def _fingerprint(self, node: Node) -> Node:
        inventory = self.registry.inventory(node.mac)
        if inventory is None:
            self.registry.add_event(
                node.mac,
                EventKind.PROFILE,
                {"profile": None, "why": "no agent inventory to fingerprint"},
            )
            return self._move(node, NodeEvent.NO_MATCH)
        match = fingerprint(inventory, self.profiles)
        self.registry.set_profile(node.mac, match.profile)
        self.registry.add_event(node.mac, EventKind.PROFILE, _summary(match))
        return self._move(node, NodeEvent.MATCH if match.profile else NodeEvent.NO_MATCH)

    def _move(self, node: Node, event: NodeEvent) -> Node:
        current = self.registry.node(node.mac)
        assert current is not None
        if current.state not in REFINGERPRINTABLE and not (
            current.state in BOOTS_PROFILE_IMAGE and event is NodeEvent.MATCH
        ):
            return current  # enrolled/local/failed nodes keep their state
        return self.registry.transition(node.mac, event, reason="fingerprint")


def _summary(match: Match) -> dict[str, str | int | None]:
    nearest = ", ".join(c.name for c in match.candidates[:3])
    detail: dict[str, str | int | None] = {"profile": match.profile, "candidates": nearest}
    if match.conflict:
        detail["conflict"] = ", ".join(match.conflict)
    if match.accelerators:
        detail["accelerators"] = ", ".join(f"{a.slug} x{a.count}" for a in match.accelerators)
    return detail
