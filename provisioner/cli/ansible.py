"""`provisioner ansible inventory`: Ansible's dynamic inventory protocol over the registry.

    provisioner ansible inventory --script > /etc/ansible/provisioner && chmod +x $_
    ansible-inventory -i /etc/ansible/provisioner --graph
    ansible all -i /etc/ansible/provisioner -m ping

``--list`` (what Ansible asks first) also writes ``<state_dir>/ssh/known_hosts`` from the
host keys post-install pins, which the hosts' ``ansible_ssh_common_args`` name with strict
host key checking on. The output is JSON: Ansible's format.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any

from provisioner import ansible_inventory as inv
from provisioner.cli.common import Exit, add_command, add_group, load_cfg, open_registry, print_json
from provisioner.clusters import store
from provisioner.clusters.site import Site
from provisioner.discovery.accelerators import accelerators


def _hosts(site: Site) -> list[inv.Host]:
    hosts: list[inv.Host] = []
    for node in site.registry.nodes():
        if not node.hostname or not node.ip:
            continue
        inventory = site.registry.inventory(node.mac)
        found = accelerators(inventory) if inventory is not None else []
        profile = site.profiles.get(node.profile) if node.profile else None
        hosts.append(
            inv.Host(
                name=node.hostname,
                address=node.ip,
                mac=node.mac,
                state=node.state.value,
                profile=node.profile,
                accelerators=tuple(
                    {"slug": a.slug, "name": a.name, "count": a.count} for a in found
                ),
                gpu=profile.gpu.__dict__ if profile and profile.gpu else None,
                host_keys=tuple(f"{k.type} {k.public_key}" for k in site.host_keys(node)),
            )
        )
    return hosts


def cmd_inventory(args: argparse.Namespace) -> int:
    cfg = load_cfg(args)
    if args.script:
        exe = shutil.which("provisioner") or f"{sys.executable} -m provisioner.cli"
        config = str(cfg.source) if cfg.source else None
        sys.stdout.write(inv.script(exe, config))
        return 0
    registry = open_registry(cfg, readonly=True)
    site = Site.open(cfg, registry)
    hosts = _hosts(site)
    clusters = [inv.Membership(c.name, c.head, tuple(c.workers)) for c in store.load_all(registry)]
    access = inv.Access(site.ssh_key, cfg.state_dir / "ssh" / "known_hosts")
    document = inv.inventory(hosts, clusters, access)
    if args.host is not None:
        found: dict[str, Any] | None = document["_meta"]["hostvars"].get(args.host)
        if found is None:
            print(f"{args.host}: no such host in the inventory", file=sys.stderr)
            return Exit.NOT_FOUND
        print_json(found)
        return 0
    _write_known_hosts(access, hosts)
    print_json(document)
    return 0


def _write_known_hosts(access: inv.Access, hosts: list[inv.Host]) -> None:
    """The pinned keys, where the hosts' ssh options point (0644: public keys only)."""
    path = access.known_hosts
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    temp.write_text(inv.known_hosts(hosts))
    os.chmod(temp, 0o644)
    temp.replace(path)


def add_ansible_commands(sub: Any) -> None:
    group = add_group(sub, "ansible", "Ansible: the registry as a dynamic inventory", "ansible_cmd")
    p = add_command(
        group, "inventory", cmd_inventory,
        "Ansible's dynamic inventory: groups by profile, cluster, role and state", json=False,
    )  # fmt: skip
    what = p.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="every group and host (the default)")
    what.add_argument("--host", metavar="NAME", help="one host's variables")
    what.add_argument(
        "--script", action="store_true", help="print an executable inventory for ansible -i"
    )
