"""`provisioner service install`: serve as a systemd service (provisioner/service.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from provisioner.cli.common import config_path, load_cfg, print_json
from provisioner.service import (
    DEFAULT_UNIT_DIR,
    UNIT_NAME,
    install_unit,
    render_unit,
    unit_spec,
)


def cmd_service_install(args: argparse.Namespace) -> int:
    path = config_path(args).absolute()
    cfg = load_cfg(args)  # a bad file fails here, not at the service's first start
    spec = unit_spec(cfg, path)
    text = render_unit(spec)
    if args.dry_run:
        if args.json:
            print_json({"path": str(Path(args.unit_dir) / UNIT_NAME), "written": False,
                        "reloaded": False, "unit": text})  # fmt: skip
        else:
            print(text, end="")
        return 0
    installed = install_unit(text, Path(args.unit_dir), spec.writable)
    if args.json:
        print_json({"path": str(installed.path), "written": True,
                    "reloaded": installed.reloaded, "unit": text})  # fmt: skip
        return 0
    print(f"wrote {installed.path}")
    if not installed.reloaded:
        print(
            "systemd is not running here: `systemctl daemon-reload` once it is",
            file=sys.stderr,
        )
    print(f"start it now and at boot: systemctl enable --now {UNIT_NAME}")
    return 0


def add_service_commands(sub: Any) -> None:
    service = sub.add_parser("service", help="run serve as a systemd service")
    service_sub = service.add_subparsers(dest="subcommand", required=True)
    install = service_sub.add_parser(
        "install",
        help=f"write {DEFAULT_UNIT_DIR / UNIT_NAME} for this config; systemctl daemon-reload",
    )
    install.add_argument("--dry-run", action="store_true", help="print the unit, write nothing")
    install.add_argument(
        "--json", action="store_true", help="{path, written, reloaded, unit} (the unit's text)"
    )
    install.add_argument(
        "--unit-dir", default=str(DEFAULT_UNIT_DIR), help=f"default: {DEFAULT_UNIT_DIR}"
    )
    install.set_defaults(func=cmd_service_install)
