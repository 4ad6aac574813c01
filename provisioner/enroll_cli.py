"""`provisioner enroll NODE... [--power-cycle] [--wait] [--timeout S] [--json]` (thin).

Without --power-cycle the nodes are put in `enrolling` and the user powers them on;
with it, each node's power driver makes its next boot a network boot and cycles it.
--wait follows every node to `enrolled` (or says which step it never reached).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from provisioner import enrollment
from provisioner.cli_common import load_cfg, open_registry, print_json, stamped
from provisioner.power import DEFAULT_TIMEOUT
from provisioner.power.credentials import candidate_files, load_store


def cmd_enroll(args: argparse.Namespace) -> int:
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
        if args.wait:
            items = enrollment.follow(registry, items, timeout=args.timeout, progress=progress)
    finally:
        registry.close()
    if args.json:
        print_json([i.as_dict() for i in items])
    else:
        for item in items:
            if item.outcome in ("failed", "unmatched"):
                print(f"{item.name}: {item.outcome}: {item.error}", file=sys.stderr)
    wanted = ("enrolled",) if args.wait else ("enrolled", "pending")
    return 0 if all(i.outcome in wanted for i in items) else 1


def add_enroll_commands(sub: Any) -> None:
    enroll = sub.add_parser(
        "enroll",
        help="power-cycle nodes into discovery; each is enrolled as soon as a profile matches",
    )
    enroll.add_argument("nodes", nargs="+", metavar="NODE", help="hostname or MAC (node add)")
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
