"""`provisioner enroll NODE... [--power-cycle] [--wait] [--timeout S] [--json]` (thin).

Without --power-cycle the nodes are put in `enrolling` and the user powers them on;
with it, each node's power driver makes its next boot a network boot and cycles it.
--wait follows every node to `enrolled` (or says which step it never reached).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioner.cli.common import load_cfg, open_registry, print_json, stamped
from provisioner.enroll import power_cycle as enrollment
from provisioner.errors import UsageError
from provisioner.power import DEFAULT_TIMEOUT, open_driver
from provisioner.power.credentials import candidate_files, load_store
from provisioner.power.settings import DriverKind, parse_power_url
from provisioner.registry import Registry


def cmd_enroll(args: argparse.Namespace) -> int:
    if args.new:
        return cmd_enroll_new(args)
    if not args.nodes:
        raise UsageError("enroll: name the nodes (or --new NAME for one nobody knows yet)")
    cfg = load_cfg(args)
    store = load_store(
        candidate_files(Path(args.credentials) if args.credentials else None, cfg.state_dir)
    )
    registry = open_registry(cfg)
    progress = (lambda line: None) if args.json else stamped
    try:
        items = enrollment.start(
            registry,
            args.nodes,
            store=store,
            power_timeout=args.power_timeout,
            progress=progress,
            power_cycle=args.power_cycle,
        )
        items = _follow(args, registry, items, progress)
    finally:
        registry.close()
    if not args.json:
        for item in items:
            if item.outcome in ("failed", "unmatched"):
                print(f"{item.name}: {item.outcome}: {item.error}", file=sys.stderr)
    wanted = ("enrolled",) if args.wait else ("enrolled", "pending")
    return 0 if all(i.outcome in wanted for i in items) else 1


def _follow(
    args: argparse.Namespace,
    registry: Registry,
    items: list[enrollment.Enrollment],
    progress: Callable[[str], None],
) -> list[enrollment.Enrollment]:
    """With --wait, follow the nodes until each is enrolled, unmatched or failed; with
    --json, print where each stands."""
    if args.wait:
        items = enrollment.follow(registry, items, timeout=args.timeout, progress=progress)
    if args.json:
        print_json([i.as_dict() for i in items])
    return items


def cmd_enroll_new(args: argparse.Namespace) -> int:
    """A node not known by MAC: power it on (driver or person), take the next unknown MAC
    that boots, confirm it is the one, name it and enroll it."""
    import time

    cfg = load_cfg(args)
    registry = open_registry(cfg)
    try:
        since = time.time()
        if args.power:
            settings = parse_power_url(args.power)
            if settings.driver is DriverKind.MANUAL:
                stamped(f"{args.new}: power it on now (network boot); waiting for it to boot")
            else:
                driver = open_driver(
                    settings,
                    node=args.new,
                    credentials=Path(args.credentials) if args.credentials else None,
                    state_dir=cfg.state_dir,
                    timeout=args.power_timeout,
                )
                stamped(f"{args.new}: power-cycling through {settings.driver.value}")
                driver.cycle()
        else:
            stamped(f"{args.new}: power it on now (network boot); waiting for it to boot")
        node = enrollment.next_unknown(registry, since, timeout=args.timeout)
        if node is None:
            print(f"{args.new}: no unknown node booted in {args.timeout:.0f} s", file=sys.stderr)
            return 1
        seen = f"{node.mac} ({node.firmware or 'firmware ?'}, {node.ip or 'no address yet'})"
        if not args.yes:
            if not sys.stdin.isatty():
                raise UsageError(f"{args.new}: {seen} booted; confirm with --yes")
            answer = input(f"{seen} booted: is it {args.new}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print(f"{args.new}: not taken; {node.mac} stays unknown", file=sys.stderr)
                return 1
        item = enrollment.adopt(registry, node, args.new, args.power)
        stamped(f"{args.new}: is {node.mac}")
        items = _follow(args, registry, [item], stamped)
    finally:
        registry.close()
    return 0 if all(i.outcome in ("enrolled", "pending") for i in items) else 1


def add_enroll_commands(sub: Any) -> None:
    enroll = sub.add_parser(
        "enroll",
        help="power-cycle nodes into discovery; each is enrolled as soon as a profile matches",
    )
    enroll.add_argument("nodes", nargs="*", metavar="NODE", help="hostname or MAC (node add)")
    enroll.add_argument(
        "--new",
        metavar="NAME",
        help="a node not known by MAC: take the next unknown one that boots, as NAME",
    )
    enroll.add_argument("--power", help="with --new: its power URL (else: power it on by hand)")
    enroll.add_argument("--yes", action="store_true", help="with --new: take it unasked")
    enroll.add_argument(
        "--power-cycle",
        action="store_true",
        help="make the next boot a network boot and cycle the node through its power driver",
    )
    enroll.add_argument("--wait", action="store_true", help="follow each node until enrolled")
    enroll.add_argument(
        "--timeout", type=float, default=900, help="seconds --wait follows the nodes (900)"
    )
    enroll.add_argument(
        "--power-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds for each power operation ({DEFAULT_TIMEOUT:.0f})",
    )
    enroll.add_argument("--credentials", help="BMC passwords file, mode 0600 (docs/power.md)")
    enroll.add_argument("--json", action="store_true")
    enroll.set_defaults(func=cmd_enroll)
