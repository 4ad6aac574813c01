"""Enrollment: an inventory arrives -> the node is fingerprinted, named and matched.

The registry keeps what the agent sent; this module turns it into an inventory, asks the
pure fingerprinting for the best profile, and records the outcome: the node's profile, a
hostname from the cluster's pattern, the state (``matched`` or ``unmatched``) and a
``profile`` event on its timeline with the nearest candidates. ``reload`` reads the
profiles again and re-fingerprints every node, keeping the last good set if the new one
has errors.

:func:`receive` is where a token-checked report enters. A node's first reports are
trusted (trust on first use: a new or discovered node booting the discovery image). An
enrolled node (or one past it: :data:`HOLDS_FOR_APPROVAL`) whose report would change its
SSH host keys (the keys post-install pins), its profile or, in proxy mode, its address is
not updated: the report is held, its ``approval`` event names old and new, and
:func:`approve` (``provisioner node approve``) applies it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provisioner.discovery.model import Inventory
from provisioner.discovery.schema import inventory_of
from provisioner.enroll.fingerprint import Match, fingerprint
from provisioner.kernel_need import refusal
from provisioner.profiles import Profile, ProfileSet, load_profiles
from provisioner.records import Detail, EventKind, Node
from provisioner.registry import Registry
from provisioner.states import BOOTS_PROFILE_IMAGE, REFINGERPRINTABLE, NodeEvent, NodeState

log = logging.getLogger(__name__)

PROFILES_GENERATION = "profiles"  # Registry.generation: the last profile reload, any serve

# (node, its profile) -> (the image ref it would boot, that image's kernel release or None)
ImageKernel = Callable[[Node, Profile], tuple[str, str | None]]

# Nodes whose keys, profile and address were accepted once (enrolled, and the states an
# enrolled node moves on to): a report that changes one waits for `node approve`.
HOLDS_FOR_APPROVAL = frozenset({*BOOTS_PROFILE_IMAGE, NodeState.LOCAL, NodeState.FAILED})


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
        image_kernel: ImageKernel | None = None,
    ):
        self.registry = registry
        self.profiles_dir = profiles_dir
        self.hostname_pattern = hostname_pattern
        self.auto_enroll = auto_enroll  # matched -> enrolled at once (it boots its image next)
        # The image a node of a profile would boot and its kernel release (None: no
        # kernel is checked): provisioner.boot.image_kernel.image_kernel.
        self.image_kernel = image_kernel
        self.profiles: ProfileSet = load_profiles(profiles_dir)  # bad set: refuse to start
        self._lock = threading.Lock()
        self._announced = registry.generation(PROFILES_GENERATION)  # the reload seen last

    def follow(self) -> list[Change] | None:
        """Reload if another serve sharing the registry reloaded its profiles since the
        last look (serve polls this); None when none did. A bad set here is refused
        (ProfileError) and this serve keeps its own, as on SIGHUP."""
        seen = self.registry.generation(PROFILES_GENERATION)
        if seen is None or seen == self._announced:
            return None
        self._announced = seen
        return self.reload(announce=False)

    def on_inventory(self, mac: str) -> Node:
        """Fingerprint the node whose inventory was just stored; returns it updated."""
        with self._lock:
            node = self.registry.assign_hostname(mac, self.hostname_pattern)
            node = self._fingerprint(node)
            if self.auto_enroll and node.state is NodeState.MATCHED:
                why = self.enroll_refusal(node)
                if why is not None:
                    self._refused(node, why)
                    return node
                node = self.registry.transition(mac, NodeEvent.ENROLL, reason="auto-enroll")
            return node

    def _refused(self, node: Node, why: str) -> None:
        self.registry.add_event(node.mac, EventKind.REFUSED, {"what": "enroll", "why": why})
        log.warning("%s: not enrolled: %s", node.hostname or node.mac, why)

    def enroll_refusal(self, node: Node) -> str | None:
        """Why ``node`` must not be enrolled into the image it would boot (its profile
        needs a newer kernel than that image's), or None."""
        profile = self.profiles.get(node.profile) if node.profile else None
        if profile is None or profile.kernel is None or self.image_kernel is None:
            return None
        ref, release = self.image_kernel(node, profile)
        return refusal(profile.name, profile.kernel, ref, release)

    def profile_for(self, inventory: Inventory) -> str | None:
        """The profile ``inventory`` would be given now (nothing is stored)."""
        with self._lock:
            return fingerprint(inventory, self.profiles).profile

    def reload(self, *, announce: bool = True) -> list[Change]:
        """Read the profiles again (raises ProfileError, keeping the old set, if bad).
        ``announce``: tell the other serves sharing the registry to reload theirs too
        (:meth:`follow`); a reload they asked for does not announce again."""
        with self._lock:
            self.profiles = load_profiles(self.profiles_dir)
            if announce:
                self._announced = self.registry.bump(PROFILES_GENERATION)
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
        if match.profile and node.state is NodeState.ENROLLING:
            # Power-cycled to enroll (`enroll --power-cycle`, the lab): a match enrolls it,
            # unless its profile needs a newer kernel than its image has. Then it is held
            # at matched with the reason, as auto-enrollment holds it.
            current = self.registry.node(node.mac)
            assert current is not None
            why = self.enroll_refusal(current)
            if why is not None:
                self._refused(current, why)
                return self.registry.transition(node.mac, NodeEvent.HOLD, reason=why)
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


# ------------------------------------------------------------------ held reports


@dataclass(frozen=True)
class Review:
    """What a report would change on a node that holds for approval (before, after)."""

    keys: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # SSH host key fingerprints
    profile: tuple[str | None, str | None] | None = None
    ip: tuple[str | None, str] | None = None

    @property
    def what(self) -> str:
        parts = [("ssh host keys", self.keys), ("profile", self.profile), ("address", self.ip)]
        return ", ".join(name for name, change in parts if change is not None)

    def as_detail(self) -> dict[str, str | None]:
        """For the ``approval`` event: what changed, each part's before and after."""
        detail: dict[str, str | None] = {"what": self.what}
        if self.keys is not None:
            detail["keys_before"] = ", ".join(self.keys[0])
            detail["keys_after"] = ", ".join(self.keys[1]) or None
        if self.profile is not None:
            detail["profile_before"], detail["profile_after"] = self.profile
        if self.ip is not None:
            detail["ip_before"], detail["ip_after"] = self.ip
        return detail


def review(
    node: Node,
    before: Inventory | None,
    after: Inventory,
    *,
    profile_after: str | None,
    ip_after: str | None = None,
    issued: str | None = None,
) -> Review | None:
    """What ``after`` would change on ``node``; None if it may be applied as it comes.

    Only nodes in :data:`HOLDS_FOR_APPROVAL` hold, and only what they had: first host keys
    (the discovery image reports none), a first profile, a first address are trusted.
    ``issued``: the fingerprint of the host key the control node made for the node
    (:mod:`provisioner.hostkeys`): then the keys must be exactly that one, and a report
    without keys (the discovery image runs no sshd) changes none.
    """
    if node.state not in HOLDS_FOR_APPROVAL:
        return None
    new_keys = _fingerprints(after)
    if issued is not None:
        old_keys: tuple[str, ...] = (issued,)
        keys_changed = bool(new_keys) and new_keys != old_keys
    else:
        old_keys = _fingerprints(before)
        keys_changed = bool(old_keys) and old_keys != new_keys
    found = Review(
        keys=(old_keys, new_keys) if keys_changed else None,
        profile=(node.profile, profile_after)
        if node.profile is not None and profile_after != node.profile
        else None,
        ip=(node.ip, ip_after) if node.ip and ip_after and ip_after != node.ip else None,
    )
    return found if found.what else None


def _fingerprints(inventory: Inventory | None) -> tuple[str, ...]:
    if inventory is None:
        return ()
    return tuple(sorted({k.fingerprint for k in inventory.ssh_host_keys}))


@dataclass(frozen=True)
class Received:
    node: Node
    held: Review | None  # not None: kept for `node approve`, nothing applied


def receive(
    registry: Registry,
    enroller: Enroller | None,
    mac: str,
    document: str,
    *,
    ip: str | None,
    issued: str | None = None,
) -> Received:
    """A token-checked report (the JSON document the registry keeps) from ``mac``; ``ip``:
    the address it came from where that is the node's address (proxy mode), else None;
    ``issued``: the fingerprint of the host key the control node made for it, if any.

    Applied (address, inventory, fingerprint) unless :func:`review` holds it.
    """
    node = registry.node(mac)
    if node is not None and node.state in HOLDS_FOR_APPROVAL:
        after = inventory_of(document)
        # As on_inventory will: a document that does not fit the schema leaves the profile.
        profile = node.profile
        if enroller is not None and after is not None:
            profile = enroller.profile_for(after)
        before = registry.inventory(mac)
        held = review(
            node, before, after or Inventory(), profile_after=profile, ip_after=ip, issued=issued
        )
        if held is not None:
            registry.hold_inventory(mac, document, ip=ip, changes=held.as_detail())
            log.warning(
                "report held for approval mac=%s node=%s: %s", mac, node.hostname, held.what
            )
            return Received(node, held)
    with registry.batch():
        if ip is not None:
            registry.set_ip(mac, ip)
        registry.drop_pending_inventory(mac)  # a report held before is stale now
        node = registry.store_inventory(mac, document)
    if enroller is not None:
        node = enroller.on_inventory(mac)
    return Received(node, None)


@dataclass(frozen=True)
class Approved:
    node: Node
    changes: Detail


def approve(registry: Registry, enroller: Enroller | None, mac: str) -> Approved | None:
    """Apply the report held for ``mac`` (keys, profile, address); None if none is held."""
    pending = registry.pending_inventory(mac)
    if pending is None:
        return None
    with registry.batch():
        registry.drop_pending_inventory(mac)
        if pending.ip is not None:
            registry.set_ip(mac, pending.ip)
        registry.store_inventory(mac, pending.data)
        registry.add_event(mac, EventKind.APPROVAL, {**pending.changes, "status": "approved"})
    node = enroller.on_inventory(mac) if enroller is not None else registry.node(mac)
    assert node is not None
    log.info("held report approved mac=%s node=%s: %s", mac, node.hostname, pending.changes)
    return Approved(node, pending.changes)
