"""What every cluster operation reads once: the configuration, the registry, the profiles,
and from them the stores, a member's post-install view and an SSH connection to it.

The CLI opens one :class:`Site` per command and hands it to the cluster operations
(:mod:`.create`, :mod:`.plan`, :mod:`.remove`, :mod:`.smoke`) and the engines.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from provisioner.config import Config
from provisioner.hostkeys import issued_public_key
from provisioner.postinstall.plan import Member
from provisioner.postinstall.ssh import Connection, HostKey, SshError, connect
from provisioner.profiles import ProfileSet, load_profiles
from provisioner.records import Node
from provisioner.registry import Registry


@dataclass(frozen=True)
class Site:
    cfg: Config
    registry: Registry
    profiles: ProfileSet

    @classmethod
    def open(cls, cfg: Config, registry: Registry) -> Site:
        return cls(cfg, registry, load_profiles(cfg.cluster.profiles_dir))

    @property
    def artifacts_dir(self) -> Path:
        return self.cfg.state_dir / "artifacts"

    @property
    def models_dir(self) -> Path:
        return self.cfg.state_dir / "models"

    @property
    def ssh_key(self) -> Path:
        return self.cfg.state_dir / "ssh" / "id_ed25519"

    def host_keys(self, node: Node) -> list[HostKey]:
        """The host key the control node made for the node (provisioner.hostkeys), else
        the ones its agent last reported: the keys post-install trusts."""
        issued = issued_public_key(self.cfg.state_dir, node.mac)
        if issued is not None:
            kind, body = issued.split()[:2]
            return [HostKey(kind, body)]
        inventory = self.registry.inventory(node.mac)
        if inventory is None:
            return []
        return [HostKey(k.type, k.public_key) for k in inventory.ssh_host_keys if k.public_key]

    def connect(self, node: Node) -> Connection:
        """An SSH session to the node as root, its reported host key pinned; refused,
        before any packet, if this machine would not reach it on the cluster network."""
        name, address = node.hostname or node.mac, node.ip or ""
        refuse_off_network(name, address, self.cfg.network.subnet)
        return connect(name, address, self.host_keys(node), self.ssh_key)

    def member(self, node: Node) -> Member:
        """The node as a post-install plan sees it."""
        profile = self.profiles.get(node.profile or "")
        inventory = self.registry.inventory(node.mac)
        threads = (inventory.cpu.threads if inventory and inventory.cpu else None) or 1
        return Member(
            hostname=node.hostname or node.mac,
            mac=node.mac,
            address=node.ip or "",
            profile=node.profile or "",
            drivers=profile.drivers if profile else (),
            engine_defaults=profile.engine_defaults.__dict__ if profile else None,
            threads=max(1, threads),
            cache_disk=self.registry.cache_disk(node.mac),
            gpu=profile.gpu.__dict__ if profile and profile.gpu else None,
        )


def refuse_off_network(node: str, address: str, subnet: IPv4Network) -> None:
    """Raise SshError if ``address`` is in the cluster ``subnet`` but this machine would
    send to it from an address outside it: through another network (its default route),
    as a lab's node once the lab is down. Asks the kernel's route (a UDP socket's
    ``connect`` sends nothing); an address outside the subnet (routed nodes) passes."""
    try:
        if IPv4Address(address) not in subnet:
            return
    except ValueError:
        return  # not an IPv4 address: connect says what is wrong with it
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((address, 22))
            source = IPv4Address(probe.getsockname()[0])
        except OSError as exc:
            raise SshError(f"{node} {address}: cannot connect over SSH: {exc}") from exc
    if source not in subnet:
        raise SshError(
            f"{node} {address}: cannot connect over SSH: this machine is not on {subnet} "
            f"(it would go from {source}, not the cluster network; a lab that is down?)"
        )
