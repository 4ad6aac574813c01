"""What every cluster operation reads once: the configuration, the registry, the profiles,
and from them the stores, a member's post-install view and an SSH connection to it.

The CLI opens one :class:`Site` per command and hands it to the cluster operations
(:mod:`.create`, :mod:`.plan`, :mod:`.remove`, :mod:`.smoke`) and the engines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provisioner.config import Config
from provisioner.hostkeys import issued_public_key
from provisioner.postinstall.plan import Member
from provisioner.postinstall.ssh import Connection, HostKey, connect
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
        """An SSH session to the node as root, its reported host key pinned."""
        return connect(node.hostname or node.mac, node.ip or "", self.host_keys(node), self.ssh_key)

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
        )
