"""``provisioner power on|off|cycle|status|boot-network NODE...`` and ``node add``.

Mounted by :mod:`provisioner.cli`: :func:`add_power_commands` on the top-level
subparsers, :func:`add_node_add_command` on ``node``'s (both may be given another
configuration loader than ``cli_common.load_cfg``, for tests). Thin: parse, look
the nodes up, hand the work to :mod:`provisioner.power.run`, print. Exit status 0 when
every node succeeded, 1 when any failed (a node not found too: each failure is one line
naming the node), the other statuses of :mod:`.common` for ``node add``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioner.cli.common import load_cfg, open_registry, print_json
from provisioner.config import Config, normalize_mac
from provisioner.enroll import lifecycle
from provisioner.errors import NameTaken, UsageError
from provisioner.names import UnsafeValue, check_hostname
from provisioner.power import (
    DEFAULT_TIMEOUT,
    Operation,
    PowerError,
    PowerState,
    open_driver,
    perform,
)
from provisioner.power.credentials import CredentialStore, candidate_files, load_store
from provisioner.power.run import Job, format_result, run_jobs
from provisioner.power.settings import PowerSettings, parse_power_url
from provisioner.records import Node
from provisioner.registry import Registry

LoadConfig = Callable[[argparse.Namespace], Config]

_OPERATIONS = {
    "on": (Operation.ON, "power the nodes on"),
    "off": (Operation.OFF, "power the nodes off (hard)"),
    "cycle": (Operation.CYCLE, "make the nodes boot now: power-cycle, or power on if off"),
    "status": (Operation.STATUS, "show each node's power state"),
    "boot-network": (Operation.BOOT_NEXT_NETWORK, "make the next boot a network (PXE) boot"),
}


def add_power_commands(subparsers: Any, load_config: LoadConfig = load_cfg) -> None:
    power = subparsers.add_parser("power", help="power control through each node's BMC")
    sub = power.add_subparsers(dest="power_command", required=True)
    for name, (op, text) in _OPERATIONS.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("nodes", nargs="+", metavar="NODE", help="hostname or MAC")
        p.add_argument("--json", action="store_true")
        p.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_TIMEOUT,
            help=f"seconds for each node (default {DEFAULT_TIMEOUT:.0f})",
        )
        p.add_argument(
            "--credentials",
            help="BMC passwords file, mode 0600 (default: $PROVISIONER_POWER_CREDENTIALS, "
            "/etc/provisioner/power.toml, <state_dir>/power.toml)",
        )
        p.set_defaults(func=cmd_power, operation=op, load_config=load_config)


def add_node_add_command(node_subparsers: Any, load_config: LoadConfig = load_cfg) -> None:
    add = node_subparsers.add_parser("add", help="register a node by MAC, with its power URL")
    add.add_argument("name", help="its hostname, e.g. node0")
    add.add_argument("--mac", required=True, help="the MAC it boots from")
    add.add_argument(
        "--power",
        help="redfish://USER@BMC, ipmi://USER@BMC, wol://MAC?interface=IF, "
        "qemu:///PATH/QMP.SOCK or manual: (no passwords here: see docs/power.md); "
        "BMC URLs take ?boot_mode=uefi|legacy|auto for network boots (auto: the firmware "
        "the node was seen with)",
    )
    add.add_argument(
        "--rename", action="store_true", help="the MAC is known under another name: rename it"
    )
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=cmd_node_add, load_config=load_config)


# ---------------------------------------------------------------- power


def _job(reg: Registry, key: str, op: Operation, store: CredentialStore, timeout: float) -> Job:
    node = reg.node(normalize_mac(key) or key)
    if node is None:
        return Job(key, _fail(f"no node {key} in the registry"))
    url = reg.power(node.mac)
    if url is None:
        return Job(
            key,
            _fail(f"no power settings: provisioner node add {key} --mac {node.mac} --power URL"),
        )
    try:
        settings = parse_power_url(url)
    except PowerError as exc:
        return Job(key, _fail(str(exc)))
    name = node.hostname or node.mac

    def work() -> PowerState | None:
        driver = open_driver(
            settings, node=name, credentials=store, timeout=timeout, firmware=node.firmware
        )
        return perform(driver, op)

    return Job(key, work, settings.driver.value, settings.target)


def _fail(message: str) -> Callable[[], PowerState | None]:
    def work() -> PowerState | None:
        raise PowerError(message)

    return work


def cmd_power(args: argparse.Namespace) -> int:
    cfg: Config = args.load_config(args)
    op: Operation = args.operation
    store = load_store(
        candidate_files(Path(args.credentials) if args.credentials else None, cfg.state_dir)
    )
    reg = open_registry(cfg, readonly=True)
    try:
        jobs = [_job(reg, key, op, store, args.timeout) for key in dict.fromkeys(args.nodes)]
    finally:
        reg.close()
    results = run_jobs(jobs, op, args.timeout)
    if args.json:
        print_json([r.as_dict() for r in results])
    else:
        for r in results:
            print(format_result(r), file=sys.stdout if r.ok else sys.stderr, flush=True)
    return 0 if all(r.ok for r in results) else 1


# ---------------------------------------------------------------- node add


def cmd_node_add(args: argparse.Namespace) -> int:
    """A node by MAC: new, or the same name again (its power URL updated). A MAC known
    under another name is refused unless ``--rename``; a name another MAC has, always."""
    cfg: Config = args.load_config(args)
    mac = normalize_mac(args.mac)
    if mac is None:
        raise UsageError(f"--mac {args.mac!r} is not a MAC address like aa:bb:cc:dd:ee:ff")
    try:
        check_hostname(args.name)
    except UnsafeValue as exc:
        raise UsageError(str(exc)) from exc
    try:
        settings: PowerSettings | None = parse_power_url(args.power) if args.power else None
    except PowerError as exc:
        raise UsageError(f"--power: {exc}") from exc
    reg = open_registry(cfg)
    try:
        known = reg.node(mac)
        lifecycle.check_name_free(reg, mac, args.name)
        if known is not None and known.hostname not in (None, args.name):
            if not args.rename:
                raise NameTaken(
                    f"{mac} is node {known.hostname}: --rename renames it {args.name} "
                    f"(or: provisioner node rename {known.hostname} {args.name})"
                )
            lifecycle.rename(reg, mac, args.name)
        with reg.batch():
            reg.touch_node(mac)
            node: Node = reg.set_hostname(mac, args.name)
            if settings is not None:
                reg.set_power(mac, settings.url)
        url = reg.power(mac)
    finally:
        reg.close()
    if args.json:
        print_json({**node.as_dict(), "power": url})
        return 0
    print(f"{node.hostname} ({node.mac}): state {node.state.value}, power {url or '-'}")
    if settings is not None and settings.needs_password:
        store = load_store(candidate_files(None, cfg.state_dir))
        try:
            store.password(args.name, settings.host)
        except PowerError as exc:
            print(f"note: {exc}", file=sys.stderr)
    return 0
