"""DHCP offers/s: our full-mode DHCP against dnsmasq, with Kea's perfdhcp as the client.

Server and client live in network namespaces joined by a bridge (made and removed here).
perfdhcp sends DISCOVERs (as a relay, so replies come back unicast) with the PXE options
60 (PXEClient) and 93 (arch 0) set, from many MACs, at a fixed rate for a fixed period;
the figure is OFFERs received per second, and drops are counted.

Run as root: .venv/bin/python bench/dhcp_bench.py [--rate 2000] [--seconds 10] [--json]
Needs Debian's kea-admin (perfdhcp) and dnsmasq-base.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from ipaddress import IPv4Interface
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Figure, report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from provisioner.lab.netns import HostSpec, LabNetwork  # noqa: E402

SERVER = "10.50.0.1"
CLIENT = "10.50.0.2"
POOL = ("10.50.1.1", "10.50.250.250")
PXE_OPTIONS = ["-o", "60," + b"PXEClient:Arch:00000:UNDI:002001".hex(), "-o", "93,0000"]


def perfdhcp(lab: LabNetwork, rate: int, seconds: int, clients: int) -> tuple[int, int]:
    """(sent DISCOVERs, received OFFERs) of one perfdhcp run."""
    argv = [
        "perfdhcp",
        "-4",
        "-i",
        "-r",
        str(rate),
        "-p",
        str(seconds),
        "-R",
        str(clients),
        "-W",
        "1000000",
        "-l",
        CLIENT,
        *PXE_OPTIONS,
        SERVER,
    ]
    done = lab.host("cli").run(argv, check=False, timeout=seconds + 60)
    text = done.stdout + done.stderr
    sent = re.search(r"sent packets: (\d+)", text)
    received = re.search(r"received packets: (\d+)", text)
    if sent is None or received is None:
        raise SystemExit(f"perfdhcp said:\n{text}")
    return int(sent.group(1)), int(received.group(1))


def udp_overflows(lab: LabNetwork, host: str) -> int:
    """The kernel's count of UDP datagrams dropped for a full receive buffer, in one
    namespace (/proc/net/snmp, Udp: RcvbufErrors)."""
    snmp = lab.host(host).run(["cat", "/proc/net/snmp"]).stdout
    lines = [line.split() for line in snmp.splitlines() if line.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def wait_udp_listener(lab: LabNetwork, port: int) -> None:
    for _ in range(100):
        out = lab.host("srv").run(["ss", "-lun"], check=False).stdout
        if f":{port} " in out:
            return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on UDP {port} in the server namespace")


def measure(
    lab: LabNetwork, argv: list[str], log: Path, args: argparse.Namespace
) -> tuple[int, int]:
    """Start a server in the server namespace, run perfdhcp against it, stop it by PID.
    Prints where datagrams were lost for full receive buffers (server, client)."""
    with open(log, "wb") as out:
        proc = lab.host("srv").popen(argv, stderr=out)
        try:
            wait_udp_listener(lab, 67)
            before = [udp_overflows(lab, host) for host in ("srv", "cli")]
            result = perfdhcp(lab, args.rate, args.seconds, args.clients)
            after = [udp_overflows(lab, host) for host in ("srv", "cli")]
            if not args.json:
                print(f"  {Path(argv[0]).name}: receive buffer overflows: server "
                      f"{after[0] - before[0]}, client {after[1] - before[1]}")  # fmt: skip
            return result
        finally:
            proc.terminate()
            proc.wait(20)


def run_ours(lab: LabNetwork, work: Path, args: argparse.Namespace) -> tuple[int, int]:
    state = work / "state-ours"
    conf = work / "ours.toml"
    conf.write_text(
        f'[network]\ninterface = "eth0"\naddress = "{SERVER}/16"\nmode = "full"\n'
        f'[dhcp]\nrange = "{POOL[0]}-{POOL[1]}"\n'
        f'[http]\nport = 8080\n[paths]\nstate_dir = "{state}"\n'
    )
    argv = [
        str(ROOT / ".venv/bin/provisioner"),
        "--config",
        str(conf),
        "--log-level",
        "WARNING",
        "serve",
    ]
    return measure(lab, argv, work / "ours.log", args)


def run_dnsmasq(lab: LabNetwork, work: Path, args: argparse.Namespace) -> tuple[int, int]:
    argv = [
        "dnsmasq",
        "--no-daemon",
        "--conf-file=/dev/null",
        "--port=0",
        "--interface=eth0",
        "--bind-interfaces",
        f"--dhcp-range={POOL[0]},{POOL[1]},255.255.0.0,1h",
        f"--dhcp-leasefile={work / 'dnsmasq.leases'}",
        "--dhcp-lease-max=100000",
        f"--dhcp-boot=undionly.kpxe,,{SERVER}",
        "--pid-file=",
        "--no-ping",
    ]
    return measure(lab, argv, work / "dnsmasq.log", args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=2000, help="DISCOVERs per second")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=10000, help="distinct MACs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    hosts = [
        HostSpec("srv", IPv4Interface(f"{SERVER}/16")),
        HostSpec("cli", IPv4Interface(f"{CLIENT}/16")),
    ]
    with tempfile.TemporaryDirectory(prefix="pv-dhcpbench-") as tmp, LabNetwork(hosts) as lab:
        work = Path(tmp)
        ours_sent, ours_got = run_ours(lab, work, args)
        peer_sent, peer_got = run_dnsmasq(lab, work, args)
    figures = [
        Figure(
            f"DHCP offers/s at {args.rate}/s offered",
            "offers/s",
            ours_got / args.seconds,
            peer_got / args.seconds,
            "dnsmasq",
        ),
    ]
    report(figures, args.json)
    if not args.json:
        print(
            f"drops: ours {ours_sent - ours_got} of {ours_sent}, "
            f"dnsmasq {peer_sent - peer_got} of {peer_sent}"
        )


if __name__ == "__main__":
    main()
