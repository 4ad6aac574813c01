"""``provisioner node list|show|enroll|approve|rename|boot|remove`` (thin: parse, call,
print). ``node add`` is in :mod:`.power` (it takes a power URL).

The lifecycle (a node found, renamed, booted from disk or the network, forgotten) is
:mod:`provisioner.enroll.lifecycle`, which the REST API's node routes do too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from provisioner.cli.common import (
    Exit,
    add_command,
    load_cfg,
    open_registry,
    print_json,
    print_timeline,
    table,
)
from provisioner.config import normalize_mac
from provisioner.enroll import lifecycle
from provisioner.enroll.matching import Enroller, approve
from provisioner.errors import IllegalTransition, Refused, UsageError
from provisioner.names import UnsafeValue
from provisioner.node_image import image_kernel
from provisioner.records import Detail, EventKind, Node
from provisioner.registry import Registry
from provisioner.states import NodeEvent, NodeState
from provisioner.timeline import ago


def cmd_node_list(args: argparse.Namespace) -> int:
    reg = open_registry(load_cfg(args), readonly=True)
    nodes = reg.nodes()
    nearest = {n.mac: _nearest(reg, n) for n in nodes if n.state is NodeState.UNMATCHED}
    if args.json:
        print_json(
            [
                {**n.as_dict(), **({"nearest": nearest[n.mac]} if n.mac in nearest else {})}
                for n in nodes
            ]
        )
        return 0
    if not nodes:
        print("no nodes yet: power on a node set to boot from the network")
        return 0
    header = ("MAC", "HOSTNAME", "STATE", "PROFILE", "IP", "FIRMWARE", "LAST SEEN")
    rows = [
        (
            n.mac,
            n.hostname or "-",
            n.state.value,
            n.profile
            or (f"nearest: {', '.join(nearest[n.mac]) or '-'}" if n.mac in nearest else "-"),
            n.ip or "-",
            n.firmware or "-",
            ago(n.last_seen),
        )
        for n in nodes
    ]
    table(header, rows)
    return 0


def _nearest(reg: Registry, node: Node) -> list[str]:
    """The candidates the last fingerprinting named for an unmatched node."""
    for event in reversed(reg.events(node.mac)):
        if event.kind is EventKind.PROFILE:
            text = str(event.detail.get("candidates") or "")
            return [c for c in text.split(", ") if c]
    return []


def cmd_node_enroll(args: argparse.Namespace) -> int:
    """matched -> enrolled: the node boots its profile's image at its next boot. Several
    nodes: each is reported; the status is 1 when any was not enrolled."""
    cfg = load_cfg(args)
    reg = open_registry(cfg)
    enroller = Enroller(
        reg, cfg.cluster.profiles_dir, cfg.cluster.hostname_pattern,
        image_kernel=image_kernel(reg, cfg.image_dir, cfg.boot.image),
    )  # fmt: skip
    done, failed = [], []
    for key in args.nodes:
        node = reg.node(normalize_mac(key) or key)
        if node is None:
            failed.append({"node": key, "error": "no such node"})
            continue
        if not node.profile:
            failed.append({"node": key, "error": f"no profile yet (state {node.state.value})"})
            continue
        why = enroller.enroll_refusal(node)
        if why is not None:
            reg.add_event(node.mac, EventKind.REFUSED, {"what": "enroll", "why": why})
            failed.append({"node": key, "error": why})
            continue
        try:
            node = reg.transition(node.mac, NodeEvent.ENROLL, reason="cli")
        except IllegalTransition as exc:
            failed.append({"node": key, "error": str(exc)})
            continue
        done.append(node.as_dict())
    if args.json:
        print_json({"enrolled": done, "failed": failed})
    else:
        for node_dict in done:
            print(f"{node_dict['hostname'] or node_dict['mac']}: enrolled ({node_dict['profile']})")
        for failure in failed:
            print(f"{failure['node']}: not enrolled: {failure['error']}", file=sys.stderr)
    return Exit.FAILED if failed else Exit.OK


def cmd_node_approve(args: argparse.Namespace) -> int:
    """Apply a report held for approval (new SSH host keys, profile or address)."""
    cfg = load_cfg(args)
    reg = open_registry(cfg)
    node = lifecycle.find(reg, args.node)
    enroller = Enroller(
        reg, cfg.cluster.profiles_dir, cfg.cluster.hostname_pattern,
        auto_enroll=cfg.cluster.auto_enroll,
        image_kernel=image_kernel(reg, cfg.image_dir, cfg.boot.image),
    )  # fmt: skip
    done = approve(reg, enroller, node.mac)
    if done is None:
        raise Refused(f"{args.node}: nothing to approve (no report is held)")
    if args.json:
        print_json({"node": done.node.as_dict(), "approved": dict(done.changes)})
    else:
        name = done.node.hostname or done.node.mac
        print(f"{name}: approved ({done.changes.get('what')}); {done.node.state.value}")
    return 0


def cmd_node_show(args: argparse.Namespace) -> int:
    reg = open_registry(load_cfg(args), readonly=True)
    node = lifecycle.find(reg, args.node)
    events = reg.events(node.mac)
    inventory = reg.inventory_document(node.mac)
    pending = reg.pending_inventory(node.mac)
    held = dict(pending.changes) if pending else None
    if args.json:
        print_json(
            {
                **node.as_dict(),
                "timeline": [e.as_dict() for e in events],
                "inventory": json.loads(inventory) if inventory else None,
                "pending_approval": held,
            }
        )
        return 0
    _show_node(node, has_inventory=inventory is not None, held=held)
    if inventory:
        _show_disks(json.loads(inventory), reg.cache_disk(node.mac))
    print("\nboot timeline (t = seconds since the first step shown, + = since the previous):")
    print_timeline(events)
    return 0


def _show_node(node: Node, *, has_inventory: bool, held: Detail | None) -> None:
    for key, value in node.as_dict().items():
        if key in ("first_seen", "last_seen") and isinstance(value, float):
            value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
        print(f"{key:11} {value if value is not None else '-'}")
    print(f"{'inventory':11} {'received' if has_inventory else '-'}")
    if held:
        print(f"{'held':11} a report changing {held.get('what')}: `provisioner node approve`")


def _show_disks(document: dict[str, Any], cache: str | None) -> None:
    """The reported disks, each with its serial and stable names (what `node disk init`
    takes); the cache disk marked."""
    disks = (document.get("inventory") or {}).get("disks") or []
    if not disks:
        return
    print("\ndisks (`node disk init` takes a /dev/disk/by-id or by-path name):")
    for disk in disks:
        size = disk.get("size_bytes")
        ids = disk.get("ids") or []
        print(
            f"  {disk.get('name') or '?':10} {f'{size / (1 << 30):.1f} GiB' if size else '-':>10}"
            f"  serial {disk.get('serial') or '-'}"
            f"{'  (the cache disk)' if cache in ids else ''}"
        )
        for name in ids:
            print(f"  {'':10} {'':>10}  {name}")


def cmd_node_rename(args: argparse.Namespace) -> int:
    reg = open_registry(load_cfg(args))
    try:
        node, before = lifecycle.rename(reg, args.node, args.hostname)
    except UnsafeValue as exc:
        raise UsageError(str(exc)) from exc
    finally:
        reg.close()
    if args.json:
        print_json({**node.as_dict(), "was": before})
    else:
        print(f"{before or node.mac} -> {node.hostname} ({node.mac})")
    return 0


def cmd_node_boot(args: argparse.Namespace) -> int:
    reg = open_registry(load_cfg(args))
    try:
        before, node = lifecycle.boot(reg, args.node, lifecycle.BootTarget(args.target), by="cli")
    finally:
        reg.close()
    if args.json:
        print_json({**node.as_dict(), "was": before.state.value})
    else:
        name = node.hostname or node.mac
        print(f"{name}: boots from {args.target} from its next boot ({before.state.value} -> "
              f"{node.state.value})")  # fmt: skip
    return 0


def cmd_node_remove(args: argparse.Namespace) -> int:
    cfg = load_cfg(args)
    reg = open_registry(cfg)
    try:
        node = lifecycle.find(reg, args.node)
        name = f"{node.hostname} ({node.mac})" if node.hostname else node.mac
        if not args.yes:
            if not sys.stdin.isatty():
                raise UsageError(f"remove {name}: confirm with --yes")
            answer = input(f"forget {name}: its inventory, power settings and timeline? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print(f"{name}: kept", file=sys.stderr)
                return Exit.FAILED
        lifecycle.remove(reg, node.mac, state_dir=cfg.state_dir)
    finally:
        reg.close()
    if args.json:
        print_json({"removed": node.as_dict()})
    else:
        print(f"{name}: removed; it is a new node at its next boot")
    return 0


def cmd_node_disk_init(args: argparse.Namespace) -> int:
    """Make a disk of the node its cache (provisioner.clusters.cache_disk): formatted only
    when blank and with --yes, a disk it did not make refused (4), nothing written."""
    from provisioner.clusters.cache_disk import init_cache_disk
    from provisioner.clusters.site import Site

    cfg = load_cfg(args)
    reg = open_registry(cfg)
    node = lifecycle.find(reg, args.node)
    done = init_cache_disk(Site.open(cfg, reg), node, args.device, yes=args.yes)
    if args.json:
        print_json(done.as_dict())
    else:
        print(f"{done.node}: {done.device} ({done.what}): {done.action}; its cache is on it")
    return 0


def add_node_commands(sub: Any) -> Any:
    """Mount ``node ...``; returns its subparsers (``node add`` is mounted by .power)."""
    node = sub.add_parser("node", help="nodes in the registry")
    node_sub = node.add_subparsers(dest="subcommand", required=True)
    add_command(node_sub, "list", cmd_node_list, "every node with its state")
    nshow = add_command(node_sub, "show", cmd_node_show, "one node and its boot timeline")
    nshow.add_argument("node", metavar="NODE", help="MAC or hostname")
    nenroll = add_command(
        node_sub, "enroll", cmd_node_enroll,
        "matched nodes boot their profile's image from their next boot",
    )  # fmt: skip
    nenroll.add_argument("nodes", nargs="+", metavar="NODE", help="MAC or hostname")
    napprove = add_command(
        node_sub, "approve", cmd_node_approve,
        "apply a report held for approval (new SSH host keys, profile or address)",
    )  # fmt: skip
    napprove.add_argument("node", metavar="NODE", help="MAC or hostname")
    rename = add_command(
        node_sub, "rename", cmd_node_rename,
        "give a node another hostname (refused while a cluster names it)",
    )  # fmt: skip
    rename.add_argument("node", metavar="NODE", help="MAC or hostname")
    rename.add_argument("hostname", metavar="NEWNAME", help="an RFC 1123 hostname, e.g. gpu3")
    boot = add_command(
        node_sub, "boot", cmd_node_boot,
        "boot a node from its disk (local) or its image (network) from its next boot",
    )  # fmt: skip
    boot.add_argument("node", metavar="NODE", help="MAC or hostname")
    boot.add_argument("target", choices=[t.value for t in lifecycle.BootTarget])
    remove = add_command(
        node_sub, "remove", cmd_node_remove,
        "forget a node: inventory, power settings, timeline (refused for a cluster's member)",
    )  # fmt: skip
    remove.add_argument("node", metavar="NODE", help="MAC or hostname")
    remove.add_argument("--yes", action="store_true", help="do not ask")
    disk = node_sub.add_parser("disk", help="a node's own disk as its cache")
    disk_sub = disk.add_subparsers(dest="disk_command", required=True)
    dinit = add_command(
        disk_sub, "init", cmd_node_disk_init,
        "make a blank disk the node's cache of models and runtimes (formats it: --yes)",
    )  # fmt: skip
    dinit.add_argument("node", metavar="NODE", help="MAC or hostname")
    dinit.add_argument(
        "device", metavar="DEV", help="/dev/disk/by-id/... or /dev/disk/by-path/... (never sda)"
    )
    dinit.add_argument(
        "--yes", action="store_true", help="format it (a blank disk only; never another's)"
    )
    return node_sub
