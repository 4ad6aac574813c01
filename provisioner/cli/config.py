"""``provisioner config init|show``: write a commented provisioner.toml, show the one in
force (thin: the file's rules are :mod:`provisioner.config`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from provisioner.cli.common import add_command, config_path, load_cfg, print_json
from provisioner.config import (
    DEFAULT_HTTP_PORT,
    DEFAULT_STATE_DIR,
    Mode,
    ensure_api_token,
    render_config,
    summary,
    write_config,
)
from provisioner.errors import NotFound, Refused, UsageError
from provisioner.names import UnsafeValue, check_interface

SYS_CLASS_NET = Path("/sys/class/net")


def interfaces(root: Path = SYS_CLASS_NET) -> list[str]:
    """This machine's network interfaces (what ``ip link`` lists)."""
    try:
        return sorted(p.name for p in root.iterdir())
    except OSError:
        return []


def cmd_config_init(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else config_path(args, lab_fallback=False)
    if out.exists() and not args.force:
        raise Refused(f"{out} exists; --force overwrites it")
    try:
        check_interface(args.interface)
    except UnsafeValue as exc:
        raise UsageError(f"--interface: {exc}") from exc
    have = interfaces()
    if args.interface not in have and not args.force_interface:
        raise NotFound(
            f"no interface {args.interface} on this machine (have: {', '.join(have) or 'none'});"
            " --force-interface writes the file for another machine"
        )
    text = render_config(
        interface=args.interface,
        address=args.address,
        mode=Mode(args.mode),
        dhcp_range=args.range,
        state_dir=Path(args.state_dir),
        http_port=args.http_port,
    )
    write_config(out, text)
    ensure_api_token(Path(args.state_dir))
    token_path = Path(args.state_dir) / "api-token"
    if args.json:
        print_json({"config": str(out), "api_token": str(token_path)})
    else:
        print(f"wrote {out}\nAPI token in {token_path} (mode 0600)")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    data = summary(load_cfg(args))
    if args.json:
        print_json(data)
    else:
        for key, value in data.items():
            print(f"{key:10} {value}")
    return 0


def add_config_commands(sub: Any) -> None:
    cfg = sub.add_parser("config", help="write or show provisioner.toml")
    cfg_sub = cfg.add_subparsers(dest="subcommand", required=True)
    init = add_command(cfg_sub, "init", cmd_config_init, "write a commented provisioner.toml")
    init.add_argument("--interface", required=True, help="the cluster-facing interface")
    init.add_argument(
        "--address", required=True, help="this node's address there, e.g. 10.10.0.1/24"
    )
    init.add_argument("--mode", required=True, choices=[m.value for m in Mode])
    init.add_argument("--range", help="full mode: the address pool FIRST-LAST")
    init.add_argument("--out", help="where to write (default: the --config path)")
    init.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR))
    init.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.add_argument(
        "--force-interface",
        action="store_true",
        help="write it even though the interface is not on this machine (a file for another)",
    )
    add_command(cfg_sub, "show", cmd_config_show, "the configuration in force")
