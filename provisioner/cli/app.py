"""The `provisioner` command: thin; it parses, calls, prints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from provisioner import __version__
from provisioner.cli.artifact import add_artifact_commands
from provisioner.cli.backup import add_backup_commands
from provisioner.cli.cluster import add_cluster_commands
from provisioner.cli.common import (
    add_command,
    ago,
    config_path,
    load_cfg,
    open_registry,
    print_json,
    print_timeline,
    table,
)
from provisioner.cli.enroll import add_enroll_commands
from provisioner.cli.image import add_image_commands
from provisioner.cli.lab import add_lab_commands
from provisioner.cli.model import add_model_commands
from provisioner.cli.power import add_node_add_command, add_power_commands
from provisioner.cli.profile import add_profile_commands
from provisioner.cli.service import add_service_commands
from provisioner.cli.smoke import add_smoke_command
from provisioner.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_HTTP_PORT,
    DEFAULT_STATE_DIR,
    Mode,
    ensure_api_token,
    normalize_mac,
    render_config,
    summary,
    write_config,
)
from provisioner.discovery.accelerators import accelerators
from provisioner.discovery.dumps import parse_dump
from provisioner.discovery.schema import inventory_schema
from provisioner.enroll.matching import Enroller, approve
from provisioner.errors import IllegalTransition, ProvisionerError
from provisioner.records import Detail, Event, EventKind, Node
from provisioner.registry import Registry
from provisioner.states import NodeEvent, NodeState

log = logging.getLogger("provisioner")


# ---------------------------------------------------------------- config


def cmd_config_init(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else config_path(args)
    if out.exists() and not args.force:
        print(f"{out} exists; use --force to overwrite it", file=sys.stderr)
        return 1
    text = render_config(
        interface=args.interface,
        address=args.address,
        mode=Mode(args.mode),
        dhcp_range=args.range,
        state_dir=Path(args.state_dir),
        http_port=args.http_port,
    )
    write_config(out, text)
    token_path = Path(args.state_dir) / "api-token"
    ensure_api_token(Path(args.state_dir))
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


# ---------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    # Lazy: serve brings uvicorn, FastAPI and the boot services (~0.3 s); no other command
    # needs them.
    from provisioner.serve import run_forever

    cfg = load_cfg(args)
    run_forever(cfg)
    return 0


# ---------------------------------------------------------------- nodes


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
    """matched -> enrolled: the node boots its profile's image at its next boot."""
    reg = open_registry(load_cfg(args))
    done, failed = [], []
    for key in args.nodes:
        node = reg.node(normalize_mac(key) or key)
        if node is None:
            failed.append({"node": key, "error": "no such node"})
            continue
        if not node.profile:
            failed.append({"node": key, "error": f"no profile yet (state {node.state.value})"})
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
    return 1 if failed else 0


def cmd_node_approve(args: argparse.Namespace) -> int:
    """Apply a report held for approval (new SSH host keys, profile or address)."""
    cfg = load_cfg(args)
    reg = open_registry(cfg)
    node = reg.node(normalize_mac(args.node) or args.node)
    if node is None:
        print(f"no node {args.node}", file=sys.stderr)
        return 1
    enroller = Enroller(
        reg, cfg.cluster.profiles_dir, cfg.cluster.hostname_pattern,
        auto_enroll=cfg.cluster.auto_enroll,
    )  # fmt: skip
    done = approve(reg, enroller, node.mac)
    if done is None:
        print(f"{args.node}: nothing to approve (no report is held)", file=sys.stderr)
        return 1
    if args.json:
        print_json({"node": done.node.as_dict(), "approved": dict(done.changes)})
    else:
        name = done.node.hostname or done.node.mac
        print(f"{name}: approved ({done.changes.get('what')}); {done.node.state.value}")
    return 0


def cmd_node_show(args: argparse.Namespace) -> int:
    reg = open_registry(load_cfg(args), readonly=True)

    node = reg.node(normalize_mac(args.node) or args.node)
    if node is None:
        print(f"no node {args.node}", file=sys.stderr)
        return 1
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
    _show_node(node, events, has_inventory=inventory is not None, held=held)
    return 0


def _show_node(
    node: Node, events: list[Event], *, has_inventory: bool, held: Detail | None
) -> None:
    for key, value in node.as_dict().items():
        if key in ("first_seen", "last_seen") and isinstance(value, float):
            value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
        print(f"{key:11} {value if value is not None else '-'}")
    print(f"{'inventory':11} {'received' if has_inventory else '-'}")
    if held:
        print(f"{'held':11} a report changing {held.get('what')}: `provisioner node approve`")
    print("\nboot timeline (t = seconds since the first step shown, + = since the previous):")
    print_timeline(events)


# ---------------------------------------------------------------- hardware dumps


def cmd_inventory_parse(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    results = []
    for name in args.files:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(errors="replace")
        result = parse_dump(text)
        found = accelerators(result.inventory)
        results.append(
            {
                "file": name,
                "format": result.format,
                "partial": result.inventory.partial,
                "accelerators": [
                    {
                        "slug": a.slug,
                        "vendor": a.vendor,
                        "device": a.device,
                        "name": a.name,
                        "count": a.count,
                    }
                    for a in found
                ],
                "pci_devices": len(result.inventory.pci),
                "problems": list(result.inventory.problems),
                **({"inventory": asdict(result.inventory)} if args.full else {}),
            }
        )
    if args.json:
        print_json(results)
    else:
        for r in results:
            accels = ", ".join(f"{a['slug']} x{a['count']}" for a in r["accelerators"]) or "none"
            print(
                f"{r['file']}: {r['format'] or 'unknown format'}; accelerators: {accels}"
                + ("; partial" if r["partial"] else "")
            )
            for problem in r["problems"]:
                print(f"  - {problem}")
    return 0 if all(r["format"] for r in results) else 1


# ---------------------------------------------------------------- profiles


def cmd_profile_reload(args: argparse.Namespace) -> int:
    """Ask the running appliance to re-read hwprofiles/ and re-fingerprint its nodes."""
    import urllib.error
    import urllib.request

    cfg = load_cfg(args)
    token = cfg.api_token_path.read_text().strip()
    host = "127.0.0.1" if cfg.http.bind in ("0.0.0.0", "127.0.0.1") else cfg.http.bind
    url = f"http://{host}:{cfg.http.port}/api/v1/profiles/reload"
    request = urllib.request.Request(
        url, method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            result = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("detail")
        if args.json:
            print_json({"status": exc.code, "detail": detail})
        elif isinstance(detail, dict):
            print(detail.get("error"), file=sys.stderr)
            for problem in detail.get("problems", []):
                print(f"  {problem}", file=sys.stderr)
        else:
            print(f"reload refused ({exc.code}): {detail}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"cannot reach provisioner serve at {url}: {exc} "
            "(is it running? `kill -HUP <its pid>` reloads too)",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print_json(result)
        return 0
    print(f"{result['profiles']} profiles loaded; {len(result['changed'])} nodes changed profile")
    for c in result["changed"]:
        print(f"  {c['mac']} ({c['hostname'] or '-'}): {c['before'] or '-'} -> {c['after'] or '-'}")
    return 0


def cmd_inventory_schema(args: argparse.Namespace) -> int:

    print_json(inventory_schema())
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="provisioner", description=__doc__)
    p.add_argument("--version", action="version", version=f"provisioner {__version__}")
    p.add_argument(
        "--config", help=f"config file (default: $PROVISIONER_CONFIG or {DEFAULT_CONFIG_PATH})"
    )
    p.add_argument("--log-level", default=os.environ.get("PROVISIONER_LOG", "INFO"))
    sub = p.add_subparsers(dest="command", required=True)

    cfg = sub.add_parser("config", help="write or show provisioner.toml")
    cfg_sub = cfg.add_subparsers(dest="subcommand", required=True)
    init = cfg_sub.add_parser("init", help="write a commented provisioner.toml")
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
    init.set_defaults(func=cmd_config_init)
    add_command(cfg_sub, "show", cmd_config_show, "the configuration in force")

    add_command(sub, "serve", cmd_serve, "run DHCP, TFTP and HTTP boot services", json=False)
    add_service_commands(sub)

    node = sub.add_parser("node", help="nodes in the registry")
    node_sub = node.add_subparsers(dest="subcommand", required=True)
    add_command(node_sub, "list", cmd_node_list, "every node with its state")
    nshow = add_command(node_sub, "show", cmd_node_show, "one node and its boot timeline")
    nshow.add_argument("node", help="MAC or hostname")
    nenroll = add_command(
        node_sub, "enroll", cmd_node_enroll,
        "matched nodes boot their profile's image from their next boot",
    )  # fmt: skip
    nenroll.add_argument("nodes", nargs="+", metavar="NODE", help="MAC or hostname")
    napprove = add_command(
        node_sub, "approve", cmd_node_approve,
        "apply a report held for approval (new SSH host keys, profile or address)",
    )  # fmt: skip
    napprove.add_argument("node", help="MAC or hostname")

    add_node_add_command(node_sub, load_cfg)
    add_power_commands(sub, load_cfg)

    add_enroll_commands(sub)

    inventory = sub.add_parser("inventory", help="hardware dumps (lspci, lshw, nvidia-smi, ...)")
    inventory_sub = inventory.add_subparsers(dest="subcommand", required=True)
    parse = inventory_sub.add_parser("parse", help="detect a dump's format, list accelerators")
    parse.add_argument("files", nargs="+", help="dump files; - reads standard input")
    parse.add_argument("--json", action="store_true")
    parse.add_argument("--full", action="store_true", help="with --json: the whole inventory")
    parse.set_defaults(func=cmd_inventory_parse)
    ischema = inventory_sub.add_parser("schema", help="the inventory's JSON Schema")
    ischema.set_defaults(func=cmd_inventory_schema)

    profile_sub = add_profile_commands(sub)
    reload = profile_sub.add_parser("reload", help="re-fingerprint nodes in the running serve")
    reload.add_argument("--json", action="store_true")
    reload.set_defaults(func=cmd_profile_reload)

    add_image_commands(sub)

    add_lab_commands(sub)

    add_artifact_commands(sub)
    add_model_commands(sub)

    add_cluster_commands(sub)
    add_smoke_command(sub)
    add_backup_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.log_level.upper() != "DEBUG":  # one line per SSH session and SFTP file: noise
        logging.getLogger("paramiko").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except ProvisionerError as exc:
        print(f"provisioner: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `provisioner ... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
