"""Ansible's dynamic inventory, from the registry. Pure: node records in, the JSON out.

Ansible runs an executable inventory with ``--list`` (every group and, under
``_meta.hostvars``, every host's variables) or ``--host NAME`` (one host's variables).
Groups: ``profile_<name>``, ``cluster_<name>``, ``role_head`` / ``role_worker`` and
``state_<state>`` (names made Ansible-safe: ``-`` becomes ``_``), all under ``all``. A
host is a node with a hostname and an address; its variables say how to reach it (root,
the control node's SSH key, strict host key checking against a ``known_hosts`` made from
the keys post-install pins) and what it is (profile, state, MAC, accelerators, clusters,
and the profile's GPU facts).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def group_name(kind: str, value: str) -> str:
    """'profile', 'nvidia-rtx-ampere' -> 'profile_nvidia_rtx_ampere' (an Ansible group)."""
    return f"{kind}_{_UNSAFE.sub('_', value)}"


@dataclass(frozen=True)
class Host:
    name: str  # the node's hostname
    address: str
    mac: str
    state: str
    profile: str | None = None
    accelerators: tuple[Mapping[str, object], ...] = ()  # slug, name, count
    gpu: Mapping[str, object] | None = None  # the profile's gpu facts
    host_keys: tuple[str, ...] = ()  # "ssh-ed25519 AAAA..." lines post-install pins


@dataclass(frozen=True)
class Membership:
    cluster: str
    head: str
    workers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Access:
    """How Ansible reaches the nodes: as whom, with which key, against which known_hosts."""

    key_file: Path
    known_hosts: Path
    user: str = "root"
    extra: Mapping[str, str] = field(default_factory=dict)


def inventory(
    hosts: Sequence[Host], clusters: Iterable[Membership], access: Access
) -> dict[str, Any]:
    """The ``--list`` document."""
    groups: dict[str, list[str]] = {}

    def join(group: str, host: str) -> None:
        members = groups.setdefault(group, [])
        if host not in members:
            members.append(host)

    names = {h.name for h in hosts}
    roles: dict[str, list[tuple[str, str]]] = {}
    for c in clusters:
        for name, role in [(c.head, "head"), *((w, "worker") for w in c.workers)]:
            if name in names:
                join(group_name("cluster", c.cluster), name)
                join(group_name("role", role), name)
                roles.setdefault(name, []).append((c.cluster, role))
    meta: dict[str, dict[str, Any]] = {}
    for h in sorted(hosts, key=lambda h: h.name):
        join(group_name("state", h.state), h.name)
        if h.profile:
            join(group_name("profile", h.profile), h.name)
        meta[h.name] = hostvars(h, roles.get(h.name, []), access)
    children = sorted(groups)
    document: dict[str, Any] = {g: {"hosts": sorted(members)} for g, members in groups.items()}
    document["all"] = {"hosts": sorted(names), "children": children}
    document["_meta"] = {"hostvars": meta}
    return document


def hostvars(host: Host, roles: Sequence[tuple[str, str]], access: Access) -> dict[str, Any]:
    """One host's variables (``--host``)."""
    options = (
        f"-o UserKnownHostsFile={access.known_hosts} -o StrictHostKeyChecking=yes "
        "-o GlobalKnownHostsFile=/dev/null"
    )
    return {
        "ansible_host": host.address,
        "ansible_user": access.user,
        "ansible_ssh_private_key_file": str(access.key_file),
        "ansible_ssh_common_args": options,
        **access.extra,
        "provisioner_mac": host.mac,
        "provisioner_state": host.state,
        "provisioner_profile": host.profile,
        "provisioner_accelerators": [dict(a) for a in host.accelerators],
        "provisioner_gpu": dict(host.gpu) if host.gpu else None,
        "provisioner_clusters": [{"cluster": c, "role": r} for c, r in roles],
    }


def known_hosts(hosts: Iterable[Host]) -> str:
    """A known_hosts file: each host's pinned keys, under its name and its address."""
    lines = []
    for h in sorted(hosts, key=lambda h: h.name):
        for key in h.host_keys:
            lines.append(f"{h.name},{h.address} {key}")
    return "".join(line + "\n" for line in lines)


def script(provisioner: str, config: str | None) -> str:
    """An executable inventory for Ansible (``-i FILE``): this command, --list or --host."""
    where = f" --config {config}" if config else ""
    return f'#!/bin/sh\nexec {provisioner}{where} ansible inventory "$@"\n'
