"""The `provisioner lab` commands: simulate, up, status, down (thin: parse, call, print)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from provisioner.cli.common import print_json, print_timeline, stamped, table
from provisioner.config import DEFAULT_IMAGE, Mode
from provisioner.errors import UsageError
from provisioner.lab import lab, netem
from provisioner.lab.lab import DEFAULT_LAB_DIR
from provisioner.lab.segment import DEFAULT_SUBNET, Segment, registry_url
from provisioner.lab.simulate import simulate
from provisioner.lab.state import LabState
from provisioner.records import Event


def cmd_lab_simulate(args: argparse.Namespace) -> int:

    def progress(who: str, what: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {who:6} {what}", file=sys.stderr, flush=True)

    runs, nodes, timelines = simulate(
        args.nodes,
        Mode(args.mode),
        args.firmware,
        progress,
        Path(args.state_dir) if args.state_dir else None,
    )
    if args.json:
        print_json(
            {
                "runs": [r.as_dict() for r in runs],
                "nodes": [n.as_dict() for n in nodes],
                "timelines": timelines,
            }
        )
        return 0 if all(r.ok for r in runs) else 1
    print()
    table(
        ("MAC", "HOSTNAME", "STATE", "PROFILE", "IP", "FIRMWARE"),
        [
            (
                n.mac,
                n.hostname or "-",
                n.state.value,
                n.profile or "-",
                n.ip or "-",
                n.firmware or "-",
            )
            for n in nodes
        ],
    )
    for node in nodes:
        print(f"\n{node.mac}:")
        print_timeline([Event.from_dict(node.mac, e) for e in timelines[node.mac]])
    failed = [r.name for r in runs if not r.ok]
    print(
        f"\n{len(runs) - len(failed)} of {len(runs)} nodes went through every step"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


def cmd_lab_up(args: argparse.Namespace) -> int:

    segment = Segment.parse(args.subnet)  # a bad value: exit 2, before anything is built
    url = None if args.registry_url is None else registry_url(args.registry_url)
    state = lab.up(
        Path(args.dir),
        nodes=args.nodes,
        firmware=args.firmware,
        mode=Mode(args.mode),
        memory_mib=args.memory or (lab.IMAGE_MEMORY_MIB if args.image else 512),
        accel=args.accel,
        progress=stamped,
        timeout=args.timeout,
        appliance=not args.no_appliance,
        image=args.image or (DEFAULT_IMAGE if args.kind == "container" else None),
        kind=args.kind,
        disk=args.disk,
        profiles=None if args.profiles is None else Path(args.profiles),
        netem=None if args.netem is None else netem.parse(args.netem),
        segment=segment,
        first_node=args.first_node,
        registry_url=url,
    )
    return _report_lab(state, as_json=args.json)


def cmd_lab_status(args: argparse.Namespace) -> int:

    state = LabState.load(Path(args.dir))
    if state is None:
        print("no lab is up (provisioner lab up)", file=sys.stderr)
        return 1
    return _report_lab(state, as_json=args.json, stuck_after=args.stuck_after)


def _report_lab(state: object, *, as_json: bool, stuck_after: float | None = None) -> int:

    assert isinstance(state, LabState)
    statuses = lab.status(state, stuck_after=stuck_after or lab.STUCK_SECONDS)
    bad = [s.name for s in statuses if s.verdict in ("failed", "stuck")]
    consoles = lab.vm_consoles(state, bad)
    if as_json:
        print_json(
            {
                "prefix": state.prefix,
                "mode": state.mode,
                "config": str(state.config),
                "nodes": [{**s.__dict__, "console_tail": consoles.get(s.name)} for s in statuses],
            }
        )
    else:
        print(f"lab {state.prefix} ({state.mode} mode), config {state.config}")
        for s in statuses:
            print("  " + s.line())
            if s.name in consoles:
                print("    serial console (last lines):")
                for line in (consoles[s.name] or "(empty)").splitlines():
                    print(f"      {line}")
    return 1 if bad or any(s.verdict != state.target for s in statuses) else 0


def cmd_lab_netem(args: argparse.Namespace) -> int:
    """Put faults on the lab's bridge (netem: loss, delay), clear them, or show them."""
    if args.clear and args.spec:
        raise UsageError("lab netem: give a spec or --clear, not both")
    directory = Path(args.dir)
    quiet = (lambda line: None) if args.json else stamped
    if args.spec or args.clear:
        wanted = netem.parse(" ".join(args.spec)) if args.spec else None
        state: LabState | None = netem.lab_faults(directory, wanted, quiet)
    else:
        state = LabState.load(directory)
    if state is None:
        print("no lab is up (provisioner lab up)", file=sys.stderr)
        return 1
    spec = netem.parse(state.netem) if state.netem else None
    if args.json:
        print_json(
            {
                "prefix": state.prefix,
                "netem": spec.as_dict() if spec else None,
                "spec": state.netem,
                "way": state.netem_way,
            }
        )
    else:
        print(f"lab {state.prefix}: {state.netem or 'no faults'} on the bridge"
              + (f" ({state.netem_way})" if state.netem_way else ""))  # fmt: skip
    return 0


def cmd_lab_down(args: argparse.Namespace) -> int:

    lab.down(Path(args.dir), stamped)
    return 0


def cmd_lab_reboot(args: argparse.Namespace) -> int:
    """Power-cycle lab nodes (the lab's power button: VMs reset, containers restarted)."""
    done = lab.reboot(Path(args.dir), args.nodes, (lambda line: None) if args.json else stamped)
    if args.json:
        print_json({"rebooted": done})
    return 0


def cmd_lab_exec(args: argparse.Namespace) -> int:
    """Run a command where the appliance runs: the lab nodes' network (ssh, curl, ...)."""
    import os

    state = LabState.load(Path(args.dir))
    if state is None:
        print("no lab is up (provisioner lab up)", file=sys.stderr)
        return 1
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("lab exec: give a command, e.g. lab exec -- ssh root@10.99.0.100", file=sys.stderr)
        return 2
    env = {**os.environ, "PROVISIONER_CONFIG": str(state.config)}
    argv = ["ip", "netns", "exec", f"{state.prefix}-prov", *command]
    os.execvpe(argv[0], argv, env)


def add_lab_commands(sub: Any) -> None:
    lab = sub.add_parser("lab", help="a virtual cluster on this machine")
    lab_sub = lab.add_subparsers(dest="subcommand", required=True)
    sim = lab_sub.add_parser(
        "simulate",
        help="serve in a throwaway network and PXE-boot simulated nodes through it",
    )
    sim.add_argument("--nodes", type=int, default=2)
    sim.add_argument("--mode", choices=[m.value for m in Mode], default="full")
    sim.add_argument("--firmware", choices=["bios", "uefi", "mixed"], default="mixed")
    sim.add_argument("--state-dir", help="keep the registry here (default: thrown away)")
    sim.add_argument("--json", action="store_true")
    sim.set_defaults(func=cmd_lab_simulate)

    lab_up = lab_sub.add_parser("up", help="boot QEMU VMs through the appliance")
    lab_up.add_argument("--nodes", type=int, default=2)
    lab_up.add_argument("--firmware", choices=["bios", "uefi", "mixed"], default="mixed")
    lab_up.add_argument("--mode", choices=[m.value for m in Mode], default="full")
    lab_up.add_argument("--memory", type=int, help="MiB per VM (default 512; 1536 with --image)")
    lab_up.add_argument(
        "--kind",
        choices=["vm", "container"],
        default="vm",
        help="vm: QEMU with real firmware; container: systemd-nspawn nodes booting the image"
        " (seconds, not minutes; no firmware steps)",
    )
    lab_up.add_argument(
        "--image",
        help="enroll the nodes and boot this image after discovery (built from images/NAME.toml"
        f" if missing), e.g. {DEFAULT_IMAGE} (containers boot it by default)",
    )
    lab_up.add_argument(
        "--accel",
        choices=["auto", "tcg", "kvm"],
        default="auto",
        help="auto: KVM only if a short OVMF boot under it works, else TCG",
    )
    lab_up.add_argument(
        "--disk",
        nargs="?",
        type=int,
        const=1,
        default=0,
        metavar="GIB",
        help="container nodes: a disk each, of GIB GiB (default 1; a sparse file behind a"
        " loop device, /dev/disk/by-id/lab-disk-NODE in the node; VMs always have disks)",
    )
    lab_up.add_argument(
        "--profiles",
        metavar="DIR",
        help="fingerprint the lab's nodes against the profiles in DIR (default: the shipped"
        " hwprofiles/): try a profile's drivers, image and engines on lab nodes first",
    )
    lab_up.add_argument(
        "--netem",
        metavar="SPEC",
        help="faults on the lab's bridge from the start, in tc netem's words: 'loss 10%%"
        " delay 50ms' (delay T [JITTER], loss P%%; see lab netem)",
    )
    lab_up.add_argument(
        "--subnet",
        metavar="CIDR",
        default=DEFAULT_SUBNET,
        help="the lab's network, a private /16 to /24: the appliance is its first address,"
        " full mode's DHCP range its 100th to 199th (another lab's is another segment)",
    )
    lab_up.add_argument(
        "--first-node",
        type=int,
        default=1,
        metavar="N",
        help="number the nodes from N (ctrN/labnodeN, MACs ending in N): nodes of two labs"
        " on one registry must not share numbers",
    )
    lab_up.add_argument(
        "--registry-url",
        metavar="URL",
        help="the lab's serve uses this PostgreSQL registry ([registry] url; no password in"
        " it: ~/.pgpass), shared with other labs or serves (docs/scale.md)",
    )
    lab_up.add_argument("--timeout", type=float, default=900, help="seconds to follow the boots")
    lab_up.add_argument(
        "--no-appliance",
        action="store_true",
        help="leave provisioner serve off (see how nodes fail without it)",
    )
    lab_up.add_argument("--json", action="store_true", help="print the nodes' states as JSON")
    lab_up.set_defaults(func=cmd_lab_up)
    lab_status = lab_sub.add_parser("status", help="each lab node's state and last boot step")
    lab_status.add_argument("--json", action="store_true")
    lab_status.add_argument(
        "--stuck-after",
        type=float,
        default=None,
        help="seconds without a new boot step before a node counts as stuck",
    )
    lab_status.set_defaults(func=cmd_lab_status)
    lab_netem = lab_sub.add_parser(
        "netem",
        help="packet loss and delay on every port of the lab's bridge (tc netem; an NFQUEUE"
        " process where the kernel has no sch_netem), or --clear; none: show them",
    )
    lab_netem.add_argument("spec", nargs="*", metavar="SPEC", help="e.g. loss 10%% delay 50ms")
    lab_netem.add_argument("--clear", action="store_true", help="take the faults off")
    lab_netem.add_argument("--json", action="store_true")
    lab_netem.set_defaults(func=cmd_lab_netem)
    lab_down = lab_sub.add_parser("down", help="remove every namespace, tap and process of the lab")
    lab_down.set_defaults(func=cmd_lab_down)
    lab_reboot = lab_sub.add_parser(
        "reboot", help="power-cycle lab nodes at once, as at the rack (VMs reset, containers "
        "restarted on a fresh boot script)",
    )  # fmt: skip
    lab_reboot.add_argument("nodes", nargs="+", metavar="NODE", help="lab node names (ctr1 ...)")
    lab_reboot.add_argument("--json", action="store_true")
    lab_reboot.set_defaults(func=cmd_lab_reboot)
    lab_exec = lab_sub.add_parser(
        "exec",
        help="run a command in the appliance's network namespace (reaches the lab's nodes)",
    )
    lab_exec.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    lab_exec.set_defaults(func=cmd_lab_exec)
    for sp in (lab_up, lab_status, lab_netem, lab_down, lab_reboot, lab_exec):
        sp.add_argument("--dir", default=str(DEFAULT_LAB_DIR), help="the lab's files")
