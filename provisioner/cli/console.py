"""``provisioner node console NODE``: the node's kernel messages (thin: parse, call, print).

The lines are those ``serve`` received with netconsole and kept under
``<state_dir>/console/`` (provisioner/console); ``--follow`` prints new ones as they
come, like ``tail -f``. ``--sol``: an IPMI node's serial console instead, through
``ipmitool ... sol activate`` with the BMC password from the credentials power uses, in
``IPMI_PASSWORD`` (never on the command line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from provisioner.cli.common import add_command, load_cfg, open_registry, print_json
from provisioner.console.store import Follower, Record, log_path, tail
from provisioner.enroll import lifecycle
from provisioner.errors import Refused, UsageError
from provisioner.power.base import PowerError
from provisioner.power.credentials import candidate_files, load_store
from provisioner.power.ipmi import sol_argv
from provisioner.power.settings import DriverKind, parse_power_url
from provisioner.records import Node

DEFAULT_LINES = 50
POLL_SECONDS = 0.5
LEVELS = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug")


def format_record(record: Record) -> str:
    """``[   12.345678] text`` (the node's kernel time), else the time it arrived."""
    line = record.line
    if line.kernel_ts is not None:
        stamp = f"[{line.kernel_ts:12.6f}]"
    else:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.ts))
    level = f" <{LEVELS[line.level]}>" if line.level is not None and line.level <= 3 else ""
    return f"{stamp}{level} {line.text}"


def cmd_node_console(args: argparse.Namespace) -> int:
    if args.lines < 0:
        raise UsageError(f"--lines {args.lines}: give 0 or more")
    cfg = load_cfg(args)
    reg = open_registry(cfg, readonly=True)
    try:
        node = lifecycle.find(reg, args.node)
        power = reg.power(node.mac)
    finally:
        reg.close()
    if args.sol:
        return _sol(node, power, Path(args.credentials) if args.credentials else None, cfg)
    records = tail(cfg.state_dir, node.mac, args.lines)
    if args.json and not args.follow:
        print_json({"node": node.hostname or node.mac, "mac": node.mac,
                    "lines": [r.as_dict() for r in records]})  # fmt: skip
        return 0
    if not records and not args.follow:
        where = log_path(cfg.state_dir, node.mac)
        how = "on" if cfg.console.enabled else "off ([console] enabled = false)"
        print(f"{node.hostname or node.mac}: no console lines kept ({where}; consoles are {how})",
              file=sys.stderr)  # fmt: skip
        return 0
    follower = Follower(cfg.state_dir, node.mac) if args.follow else None
    _print(records, args.json)
    if follower is None:
        return 0
    try:
        while True:
            _print(follower.poll(), args.json)
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        return 0


def _print(records: list[Record], as_json: bool) -> None:
    for record in records:
        text = json.dumps(record.as_dict()) if as_json else format_record(record)
        print(text, flush=True)


def _sol(node: Node, power: str | None, credentials: Path | None, cfg: Any) -> int:
    name = node.hostname or node.mac
    if power is None:
        raise Refused(f"{name}: no power settings, so no BMC to ask for Serial-over-LAN")
    try:
        settings = parse_power_url(power)
    except PowerError as exc:
        raise Refused(f"{name}: {exc}") from exc
    if settings.driver is not DriverKind.IPMI:
        raise Refused(
            f"{name}: Serial-over-LAN is IPMI's (its power URL is {settings.driver.value}); "
            "read its kernel's lines without --sol"
        )
    store = load_store(candidate_files(credentials, cfg.state_dir))
    password = store.password(name, settings.host)
    argv = sol_argv(settings)
    env = {**os.environ, "IPMI_PASSWORD": password.reveal()}
    print(f"{name}: Serial-over-LAN on {settings.target} (~. ends it)", file=sys.stderr)
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError as exc:
        raise Refused("ipmitool is not installed (apt-get install ipmitool)") from exc
    return 0  # not reached: exec replaced this process


def add_console_command(node_sub: Any) -> None:
    """Mount ``node console`` under ``node``."""
    console = add_command(
        node_sub, "console", cmd_node_console,
        "the node's kernel messages (netconsole), or an IPMI node's Serial-over-LAN",
    )  # fmt: skip
    console.add_argument("node", metavar="NODE", help="MAC or hostname")
    console.add_argument(
        "--lines", "-n", type=int, default=DEFAULT_LINES, metavar="N",
        help=f"the last N lines (default {DEFAULT_LINES})",
    )  # fmt: skip
    console.add_argument(
        "--follow", "-f", action="store_true",
        help="then print new lines as they come (--json: one object a line)",
    )  # fmt: skip
    console.add_argument(
        "--sol", action="store_true",
        help="IPMI nodes: Serial-over-LAN through ipmitool (sol activate) instead",
    )  # fmt: skip
    console.add_argument(
        "--credentials",
        help="--sol: BMC passwords file, mode 0600 (default: as `provisioner power`)",
    )
