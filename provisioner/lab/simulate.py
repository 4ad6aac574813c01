"""`provisioner lab simulate`: the appliance on embedded defaults in a throwaway network.

`provisioner serve` runs in one network namespace; N simulated nodes in others do what
firmware and iPXE do, with real clients: the scripted PXE client (scapy) for DHCP, curl
for TFTP and HTTP. In proxy mode Debian's dnsmasq plays the site DHCP server. Each node
goes DHCP -> TFTP (iPXE binary) -> iPXE DHCP -> boot script -> kernel/initrd; then the
registry's node list and timelines are shown and everything made here is removed.

The nodes are simulated (no firmware runs); `provisioner lab up` boots real QEMU VMs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path

from provisioner.config import Mode, render_config, write_config
from provisioner.errors import ProvisionerError
from provisioner.lab.lab_config import site_dhcp_argv
from provisioner.lab.netns import HostSpec, LabNetwork, Namespace
from provisioner.records import Node
from provisioner.registry import Registry

SUBNET = "10.99.0"
SERVER = f"{SUBNET}.1"
SITE = f"{SUBNET}.2"
HTTP_PORT = 8080
FIRMWARE = {
    "bios": ("0", "PXEClient:Arch:00000:UNDI:002001"),
    "uefi": ("7", "PXEClient:Arch:00007:UNDI:003016"),
}

Progress = Callable[[str, str], None]


@dataclass
class Step:
    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class NodeRun:
    name: str
    mac: str
    firmware: str
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "mac": self.mac,
            "firmware": self.firmware,
            "ok": self.ok,
            "steps": [s.__dict__ for s in self.steps],
        }


def node_mac(index: int) -> str:
    return f"02:99:00:00:00:{index:02x}"


def firmware_for(choice: str, index: int) -> str:
    if choice == "mixed":
        return "bios" if index % 2 else "uefi"
    return choice


class Simulation:
    def __init__(self, nodes: int, mode: Mode, firmware: str, work: Path, progress: Progress):
        self.nodes = nodes
        self.mode = mode
        self.firmware = firmware
        self.work = work
        self.progress = progress
        self.state = work / "state"
        self.config = work / "provisioner.toml"

    def run(self) -> tuple[list[NodeRun], list[Node], dict[str, list[dict[str, object]]]]:
        hosts = [HostSpec("prov", IPv4Interface(f"{SERVER}/24"))]
        if self.mode is Mode.PROXY:
            hosts.append(HostSpec("site", IPv4Interface(f"{SITE}/24")))
        hosts += [HostSpec(f"node{i}", None, node_mac(i)) for i in range(1, self.nodes + 1)]
        with LabNetwork(hosts) as lab:
            self.progress("lab", f"network {lab.prefix}: {', '.join(h.name for h in hosts)}")
            if self.mode is Mode.PROXY:
                self._site_dhcp(lab.host("site"))
            self._serve(lab.host("prov"))
            with ThreadPoolExecutor(max_workers=self.nodes) as pool:
                runs = list(
                    pool.map(
                        lambda i: self._boot(lab.host(f"node{i}"), i), range(1, self.nodes + 1)
                    )
                )
            registry = Registry(self.state / "registry.sqlite3")
            nodes = registry.nodes()
            timelines = {n.mac: [e.as_dict() for e in registry.events(n.mac)] for n in nodes}
            registry.close()
        self.progress("lab", f"network {lab.prefix} removed")
        return runs, nodes, timelines

    def _site_dhcp(self, ns: Namespace) -> None:
        argv = site_dhcp_argv(f"{SUBNET}.100", f"{SUBNET}.199", self.work)
        with open(self.work / "site-dhcp.log", "wb") as log:
            ns.popen(argv, stderr=log)
        self.progress("site", "dnsmasq is the site DHCP server (addresses only)")

    def _serve(self, ns: Namespace) -> None:
        text = render_config(
            interface="eth0",
            address=f"{SERVER}/24",
            mode=self.mode,
            dhcp_range=f"{SUBNET}.100-{SUBNET}.199" if self.mode is Mode.FULL else None,
            state_dir=self.state,
            http_port=HTTP_PORT,
        )
        write_config(self.config, text)
        argv = [sys.executable, "-m", "provisioner.cli", "--config", str(self.config), "serve"]
        with open(self.work / "serve.log", "wb") as log:
            proc = ns.popen(argv, stderr=log)
        deadline = time.monotonic() + 30
        probe = ["curl", "-sf", "-o", "/dev/null", f"http://{SERVER}:{HTTP_PORT}/healthz"]
        while ns.run(probe, check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                log_text = (self.work / "serve.log").read_text()[-2000:]
                raise ProvisionerError(f"provisioner serve did not start:\n{log_text}")
            time.sleep(0.1)
        self.progress("prov", f"provisioner serve ({self.mode.value} mode) on {SERVER}")

    def _boot(self, ns: Namespace, index: int) -> NodeRun:
        name, mac = f"node{index}", node_mac(index)
        return boot_node(
            ns, name, mac, firmware_for(self.firmware, index), self.work, self.progress
        )


def boot_node(
    ns: Namespace, name: str, mac: str, fw: str, work: Path, progress: Progress
) -> NodeRun:
    """What one node's firmware and iPXE do, from ``ns``, each step timed: DHCP (the
    scripted PXE client, address configured), the iPXE binary over TFTP, iPXE's DHCP,
    its boot script, kernel and initrd over HTTP. Stops at the first failed step."""
    run = NodeRun(name, mac, fw)
    arch, vendor = FIRMWARE[fw]
    pxe_args = ["--arch", arch, "--vendor-class", vendor]

    def step(label: str, ok: bool, detail: str, started: float) -> bool:
        run.steps.append(Step(label, ok, detail, round(time.monotonic() - started, 3)))
        progress(name, f"{label:12} {'ok ' if ok else 'FAILED'} {detail}")
        return ok

    t = time.monotonic()
    first = pxe(ns, mac, [*pxe_args, "--configure"])
    if not step(
        "dhcp",
        bool(first.get("ok", True)) and "boot_file" in first,
        f"address {first.get('address')} boot {first.get('boot_file')}",
        t,
    ):
        return run
    t = time.monotonic()
    boot_file = str(first["boot_file"])
    out = work / f"{name}-{Path(boot_file).name}"
    got = _curl(
        ns,
        f"tftp://{first['next_server']}/{boot_file}",
        "--tftp-blksize",
        "1468",
        "-o",
        str(out),
    )
    size = out.stat().st_size if out.exists() else 0
    if not step("tftp", got.returncode == 0 and size > 0, f"{boot_file} {size} bytes", t):
        return run
    t = time.monotonic()
    second = pxe(ns, mac, [*pxe_args, "--user-class", "iPXE"])
    url = str(second.get("boot_file"))
    if not step("ipxe-dhcp", url.startswith("http://"), f"script {url}", t):
        return run
    t = time.monotonic()
    script = _curl(ns, url).stdout
    kernel = re.search(r"^kernel (\S+)", script, re.M)
    initrd = re.search(r"^initrd (?:--name \S+ )?(\S+)", script, re.M)
    if kernel is None or initrd is None:
        note = (
            "no image to boot yet (discovery image not built)"
            if ("not in the image store" in script)
            else script[:80]
        )
        step("script", script.startswith("#!ipxe"), note, t)
        return run
    step("script", True, "boots " + kernel.group(1).split("/images/")[-1], t)
    for label, match in (("kernel", kernel), ("initrd", initrd)):
        t = time.monotonic()
        fetched = _curl(ns, match.group(1), "-o", "/dev/null", "-w", "%{size_download}")
        step(label, fetched.returncode == 0, f"{fetched.stdout} bytes", t)
    return run


def pxe(ns: Namespace, mac: str, args: list[str]) -> dict[str, object]:
    argv = [
        sys.executable,
        "-m",
        "provisioner.lab.pxeclient",
        "--iface",
        "eth0",
        "--mac",
        mac,
        "--timeout",
        "20",
        "--json",
        *args,
    ]
    done = ns.run(argv, check=False, timeout=60)
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"ok": False, "error": done.stderr.strip()}
    return result if isinstance(result, dict) else {"ok": False}


def _curl(ns: Namespace, *args: str) -> subprocess.CompletedProcess[str]:
    return ns.run(["curl", "-s", "--max-time", "60", *args], check=False, timeout=90)


def simulate(
    nodes: int, mode: Mode, firmware: str, progress: Progress, state_dir: Path | None = None
) -> tuple[list[NodeRun], list[Node], dict[str, list[dict[str, object]]]]:
    with tempfile.TemporaryDirectory(prefix="provisioner-lab-") as tmp:
        work = Path(tmp)
        sim = Simulation(nodes, mode, firmware, work, progress)
        if state_dir is not None:
            sim.state = state_dir
        return sim.run()
