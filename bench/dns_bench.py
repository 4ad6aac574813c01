"""DNS queries/s for the cluster zone: our responder (serve's [dns]) against dnsmasq.

Server and client live in network namespaces joined by a bridge (made and removed here).
The zone holds --nodes nodes (node0..nodeN-1.cluster.lan, from the registry for ours, from
a hosts file for dnsmasq, which answers them as its own local names); dnsperf (Debian's)
asks for them over UDP, A records in a random order, for --seconds at up to --clients
queries in flight. The figure is queries answered per second, and lost ones are counted.
The issue's goal: at least 0.5x dnsmasq.

Run as root: .venv/bin/python bench/dns_bench.py [--nodes 500] [--seconds 10] [--json]
Needs Debian's dnsperf and dnsmasq-base.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Figure, report
from dhcp_bench import wait_udp_listener

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from provisioner.lab.netns import HostSpec, LabNetwork  # noqa: E402
from provisioner.registry import Registry  # noqa: E402

SERVER = "10.52.0.1"
CLIENT = "10.52.0.2"
ZONE = "cluster.lan"


def node_ip(i: int) -> str:
    return str(IPv4Address("10.52.1.0") + i)


def queries(work: Path, nodes: int) -> Path:
    rng = random.Random(1)
    path = work / "queries.txt"
    path.write_text("".join(f"node{rng.randrange(nodes)}.{ZONE} A\n" for _ in range(20000)))
    return path


def dnsperf(lab: LabNetwork, work: Path, args: argparse.Namespace) -> tuple[float, int]:
    """(queries/s answered, queries lost) of one dnsperf run."""
    argv = ["dnsperf", "-s", SERVER, "-d", str(queries(work, args.nodes)), "-l", str(args.seconds),
            "-c", "4", "-q", str(args.clients), "-t", "2"]  # fmt: skip
    done = lab.host("cli").run(argv, check=False, timeout=args.seconds + 60)
    text = done.stdout + done.stderr
    rate = re.search(r"Queries per second:\s+([\d.]+)", text)
    lost = re.search(r"Queries lost:\s+(\d+)", text)
    if rate is None or lost is None:
        raise SystemExit(f"dnsperf said:\n{text}")
    return float(rate.group(1)), int(lost.group(1))


def measure(
    lab: LabNetwork, argv: list[str], work: Path, log: Path, args: argparse.Namespace
) -> tuple[float, int]:
    with open(log, "wb") as out:
        proc = lab.host("srv").popen(argv, stderr=out)
        try:
            wait_udp_listener(lab, 53)
            return dnsperf(lab, work, args)
        finally:
            proc.terminate()
            proc.wait(20)


def run_ours(lab: LabNetwork, work: Path, args: argparse.Namespace) -> tuple[float, int]:
    state = work / "state"
    state.mkdir()
    registry = Registry(state / "registry.sqlite3")
    with registry.batch():
        for i in range(args.nodes):
            mac = f"02:52:00:00:{i >> 8:02x}:{i & 0xFF:02x}"
            registry.touch_node(mac, ip=node_ip(i))
            registry.set_hostname(mac, f"node{i}")
    registry.close()
    conf = work / "ours.toml"
    conf.write_text(
        f'[network]\ninterface = "eth0"\naddress = "{SERVER}/16"\nmode = "proxy"\n'
        f'[http]\nport = 8080\n[dns]\nenabled = true\nzone = "{ZONE}"\n'
        f'[paths]\nstate_dir = "{state}"\n'
    )
    argv = [
        str(ROOT / ".venv/bin/provisioner"),
        "--config",
        str(conf),
        "--log-level",
        "WARNING",
        "serve",
    ]
    return measure(lab, argv, work, work / "ours.log", args)


def run_dnsmasq(lab: LabNetwork, work: Path, args: argparse.Namespace) -> tuple[float, int]:
    hosts = work / "hosts"
    hosts.write_text("".join(f"{node_ip(i)} node{i}.{ZONE}\n" for i in range(args.nodes)))
    argv = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            f"--addn-hosts={hosts}", f"--local=/{ZONE}/", "--interface=eth0", "--bind-interfaces",
            "--pid-file=", "--cache-size=10000"]  # fmt: skip
    return measure(lab, argv, work, work / "dnsmasq.log", args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=100, help="queries in flight")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    hosts = [
        HostSpec("srv", IPv4Interface(f"{SERVER}/16")),
        HostSpec("cli", IPv4Interface(f"{CLIENT}/16")),
    ]
    with tempfile.TemporaryDirectory(prefix="pv-dnsbench-") as tmp, LabNetwork(hosts) as lab:
        work = Path(tmp)
        ours, ours_lost = run_ours(lab, work, args)
        peer, peer_lost = run_dnsmasq(lab, work, args)
    report(
        [Figure(f"DNS A queries/s, {args.nodes} names", "queries/s", ours, peer, "dnsmasq")],
        args.json,
    )
    if not args.json:
        print(f"lost: ours {ours_lost}, dnsmasq {peer_lost}")


if __name__ == "__main__":
    main()
