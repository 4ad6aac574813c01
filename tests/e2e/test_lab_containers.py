"""Container lab nodes end to end: the shared image in systemd-nspawn, through the appliance.

`provisioner lab up --nodes 0 --image debian-bookworm` gives the lab's network and
`provisioner serve` (full DHCP mode); then three container nodes start at once from the
image's unpacked root (provisioner/lab/containers.py). Each fetches its boot script as
iPXE would (a fresh per-boot token), boots systemd with the script's provisioner.* words
as PID 1's arguments, takes a lease from the appliance's DHCP server, installs the control
node's key and reports from the image; the report is fingerprinted (``generic-cpu``).
Enrolled, a node started again gets its image's script and a new token, and reports
again; OpenSSH's client logs into it with the control node's key, checking the host key
against the one the node reported last. Stopping leaves no process, namespace or cgroup.

Issue 22 on the same lab (tests/e2e/observers.py, both in the appliance's namespace):
Debian's ``prometheus``, started before the nodes are enrolled, finds them through the
appliance's ``http_sd`` and scrapes each one's node exporter (in the image) and the
appliance: all ``up``, labelled by profile and state. Debian's Ansible takes
``provisioner ansible inventory --script`` as its inventory: ``--graph`` lists the nodes
by profile and state, ``ansible all -m ping`` gets ``pong`` from each with host key
checking on, and fails against an empty known_hosts.

Prints the seconds from the first start to the last ``ready``, each node's memory, and
the seconds from `node enroll` until Prometheus scraped every node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from provisioner.lab.containers import (
    Booter,
    ContainerSpec,
    Started,
    container_specs,
    start_containers,
    stop_containers,
    unpack_root,
    wait_ready,
)
from provisioner.lab.netns import (
    Namespace,
    _run,
    host_routes,
    list_namespaces,
    overlapping_routes,
)
from provisioner.records import HTTP_PORT, RPC_PORT
from provisioner.registry import Registry
from tests.e2e.conftest import BuiltRootfs, llama_cluster, node_json, run_cli, ssh_node
from tests.e2e.observers import Prometheus, ansible, inventory_script, pings

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.mirror]  # nspawn, no QEMU

BASE = "http://10.99.0.1:8080"
NODES = int(os.environ.get("PROVISIONER_TEST_CONTAINERS", "3"))


def _pss_mib(pids: list[int]) -> float:
    """Proportional set size of these processes (shared pages split among sharers)."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += sum(int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("Pss:"))
    return total / 1024


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class Lab:
    """The lab `lab up --nodes 0` made, and container nodes started in it."""

    def __init__(self, directory: Path, root: Path) -> None:
        self.directory = directory
        self.root = root
        self.prefix = json.loads((directory / "lab.json").read_text())["prefix"]
        self.switch = Namespace(f"{self.prefix}-sw")
        self.prov = Namespace(f"{self.prefix}-prov")
        self.messages: list[str] = []
        self.started: dict[str, Started] = {}

    def start(self, specs: Sequence[ContainerSpec]) -> dict[str, float]:
        """Start ``specs`` at once and wait until each is ready; seconds to ready."""
        nodes = start_containers(
            self.prefix,
            self.switch,
            specs,
            Booter(
                self.prov.name,
                BASE,
                self.directory / "state" / "images",
                self.root.parent,
                "debian-bookworm",
            ),
            self.messages.append,
            self.directory / "containers",
        )
        self.started.update((s.name, s) for s in nodes)
        registry = Registry(self.directory / "state" / "registry.sqlite3")
        try:
            ready = wait_ready(registry, nodes, self.messages.append, timeout=60 + 10 * len(nodes))
        finally:
            registry.close()
        late = {
            s.name: Path(s.console).read_text(errors="replace")[-1500:]
            for s in nodes
            if s.name not in ready
        }
        assert not late, f"not ready: {sorted(late)}\n{late}"
        return ready

    def stop(self, names: Sequence[str]) -> None:
        stop_containers([self.started.pop(n) for n in names], self.messages.append)

    def node(self, mac: str, *, state: str | None = None) -> dict[str, Any]:
        """The node as `node show --json` prints it (once in ``state``, if given: the
        report is fingerprinted just after the ``inventory`` event that made it ready)."""
        deadline = time.monotonic() + 30
        while state and (node := node_json(self.directory, mac))["state"] != state:
            assert time.monotonic() < deadline, f"{mac} stays {node['state']}"
            time.sleep(0.2)
        return node_json(self.directory, mac)


def test_container_nodes_boot_the_shared_image_report_and_take_ssh_logins(
    lab_dir: Path, rootfs_built: BuiltRootfs, tmp_path: Path
) -> None:
    if shutil.which("systemd-nspawn") is None:
        pytest.skip("needs systemd-nspawn: apt-get install systemd-container")
    for tool in ("unsquashfs", "ssh"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing (scripts/setup installs it)")
    images = lab_dir / "state" / "images"
    images.mkdir(parents=True)
    stored = images / rootfs_built.image.name
    shutil.copytree(rootfs_built.image, stored)
    up = run_cli(
        "lab", "up", "--dir", str(lab_dir), "--nodes", "0", "--mode", "full",
        "--image", "debian-bookworm", "--accel", "tcg", "--timeout", "30",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr[-4000:]
    unpacked: list[str] = []
    root = unpack_root(stored, lab_dir / "rootfs", unpacked.append)
    assert (root / "usr" / "bin" / "provisioner-agent").is_file()
    assert unpack_root(stored, lab_dir / "rootfs", unpacked.append) == root  # once
    print(unpacked)

    lab = Lab(lab_dir, root)
    specs = container_specs(NODES)
    try:
        ready = lab.start(specs)
        first = min(s.started_at for s in lab.started.values())
        last = max(lab.started[n].started_at + secs for n, secs in ready.items())
        pss = [_pss_mib(Namespace(s.netns).pids()) for s in lab.started.values()]
        print(
            f"{NODES} container nodes: the last ready {last - first:.1f} s after the first "
            f"start (each {min(ready.values()):.1f}-{max(ready.values()):.1f} s after its "
            f"own); PSS per node {min(pss):.0f}-{max(pss):.0f} MiB"
        )

        for spec in specs:
            node = lab.node(spec.mac)
            assert node["profile"] == "generic-cpu" and node["state"] in ("matched", "enrolled")
            kinds = [e["kind"] for e in node["timeline"]]
            assert kinds[0] == "script" and kinds.index("keys") < kinds.index("inventory")
            inventory = node["inventory"]["inventory"]
            assert inventory["hostname"] == spec.name
            # its own NIC only: not the host's (nspawn runs inside the node's namespace)
            assert [(n["name"], n["mac"]) for n in inventory["nics"]] == [("host0", spec.mac)]
            assert inventory["pci"] == []  # the host's devices are hidden
            # the address networkd leased from the appliance's DHCP server (full mode)
            ip = IPv4Address(node["ip"])
            assert IPv4Address("10.99.0.100") <= ip <= IPv4Address("10.99.0.199"), ip
        assert len({lab.node(s.mac)["ip"] for s in specs}) == NODES

        # Enrolled, a node started again boots its image's script with a new token. Before
        # the enrolment, Prometheus is started: it sees the nodes once they are enrolled.
        one = specs[0]
        config = lab_dir / "provisioner.toml"
        (tmp_path / "prometheus").mkdir()
        token = lab_dir / "state" / "api-token"
        prometheus = Prometheus(lab.prov, tmp_path / "prometheus", BASE, token)
        with prometheus.running():
            prometheus.wait_up(set(), timeout=60)  # the appliance's own /metrics first
            enrolled_at = time.monotonic()
            enroll = run_cli("--config", str(config), "node", "enroll", *[s.mac for s in specs])
            assert enroll.returncode == 0, enroll.stderr
            seen = prometheus.wait_up({s.mac for s in specs}, timeout=60)
            seen_s = time.monotonic() - enrolled_at
        print(f"Prometheus scraped all {NODES} nodes {seen_s:.1f} s after `node enroll`")
        names = {}  # MAC -> the name the registry gave the node
        for spec in specs:
            labels, shown = seen[spec.mac]["labels"], lab.node(spec.mac)
            names[spec.mac] = shown["hostname"]
            assert labels["profile"] == "generic-cpu" and labels["state"] == "enrolled", labels
            assert labels["node"] == shown["hostname"], labels
            assert "cluster" not in labels and "role" not in labels  # Prometheus drops ""
            assert seen[spec.mac]["scrapeUrl"] == f"http://{shown['ip']}:9100/metrics"
        assert seen["appliance"]["labels"]["role"] == "appliance"
        assert seen["appliance"]["scrapeUrl"] == f"{BASE}/metrics"

        lab.stop([one.name])
        lab.start([one])
        node = lab.node(one.mac, state="enrolled")
        scripts = [e["detail"] for e in node["timeline"] if e["kind"] == "script"]
        assert [s["boot"] for s in scripts] == ["discovery", "image"]
        assert scripts[-1]["image"] == rootfs_built.image.name
        # Its host key is the one the control node issued at its first boot: the same
        # after a restart, so its report needs no approval.
        assert not node.get("pending_approval"), node["pending_approval"]
        issued = lab_dir / "state" / "hostkeys" / one.mac.replace(":", "")
        public = (issued / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        reported = node["inventory"]["inventory"]["ssh_host_keys"]
        assert [[k["type"], k["public_key"]] for k in reported] == [public]

        address = node["ip"]
        known = tmp_path / "known_hosts"
        keys = node["inventory"]["inventory"]["ssh_host_keys"]
        known.write_text("".join(f"{address} {k['type']} {k['public_key']}\n" for k in keys))
        key = lab_dir / "state" / "ssh" / "id_ed25519"
        login = run_cli(
            "lab", "exec", "--dir", str(lab_dir), "--",
            "ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=20", f"root@{address}",
            "tr '\\0' ' ' </proc/1/cmdline; echo; hostname; id -u; systemd-detect-virt;"
            " systemctl is-system-running; systemctl is-active prometheus-node-exporter"
            " provisioner-accel-exporter.timer; ls /var/lib/prometheus/node-exporter | wc -l",
            timeout=60,
        )  # fmt: skip
        assert login.returncode == 0, login.stderr
        lines = login.stdout.strip().splitlines()[-8:]
        cmdline, hostname, uid, virt, running, exporter, timer, prom_files = lines
        assert f"provisioner.mac={one.mac}" in cmdline and "provisioner.token=" in cmdline
        assert (hostname, uid, virt, running) == (one.name, "0", "systemd-nspawn", "running")
        # The node exporter runs; the accelerator exporter's timer too, and writes nothing
        # in a container (no accelerator: the host's devices are hidden).
        assert (exporter, timer, prom_files) == ("active", "active", "0")

        # Ansible: the registry as its inventory, every node's host key pinned.
        script = inventory_script(config, tmp_path)
        graph = ansible(lab.prov, tmp_path, "ansible-inventory", "-i", str(script), "--graph")
        assert graph.returncode == 0, graph.stderr
        tree = [line.strip(" |-") for line in graph.stdout.splitlines()]
        hosts = sorted(names.values())
        for group in ("@profile_generic_cpu:", "@state_enrolled:"):
            at = tree.index(group)
            assert tree[at + 1 : at + 1 + NODES] == hosts, graph.stdout
        t0 = time.monotonic()
        ping = ansible(lab.prov, tmp_path, "ansible", "all", "-i", str(script), "-m", "ping", "-o")
        ping_s = time.monotonic() - t0
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert pings(ping.stdout) == dict.fromkeys(hosts, "SUCCESS pong"), ping.stdout
        print(f"ansible all -m ping: {NODES} pongs in {ping_s:.1f} s")
        # Host key checking is really on: against an empty known_hosts every node fails.
        (tmp_path / "empty_known_hosts").write_text("")
        strict = f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={tmp_path}/empty_known_hosts"
        refused = ansible(
            lab.prov, tmp_path, "ansible", "all", "-i", str(script), "-m", "ping", "-o",
            "-e", json.dumps({"ansible_ssh_common_args": strict}),
        )  # fmt: skip
        assert refused.returncode != 0
        assert all(r.startswith("UNREACHABLE") for r in pings(refused.stdout).values())
        assert len(pings(refused.stdout)) == NODES, refused.stdout
        assert "Host key verification failed" in refused.stdout, refused.stdout
    finally:
        everyone = list(lab.started.values())
        lab.stop(list(lab.started))
        print("\n".join(lab.messages))

    assert all(_gone(s.pid) for s in everyone)
    assert not [n for n in list_namespaces() if n.startswith(f"{lab.prefix}-c")]
    assert not [c for s in everyone for c in s.cgroups if Path(c).exists()]


# ------------------------------------------------------------------ typed on this machine

LAB_SUBNET = "10.99.0.0/24"
GUARD = "provisioner_labguard"


def _nft(*args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    """``nft ARGS``, or ``nft -f -`` reading ``script``."""
    argv = ["nft", "-f", "-"] if script is not None else ["nft", *args]
    return subprocess.run(
        argv, input=script, capture_output=True, text=True, timeout=30, check=False
    )


def _guard_counters() -> dict[str, int]:
    """Packets each rule of the guard table counted, by the rule's comment."""
    listed = json.loads(_nft("-j", "list", "table", "inet", GUARD).stdout)
    counts = {}
    for item in listed["nftables"]:
        rule = item.get("rule")
        if rule:
            counter = next(e["counter"] for e in rule["expr"] if "counter" in e)
            counts[rule["comment"]] = int(counter["packets"])
    return counts


def _scan_from_outside(lab_dir: Path, hosts: list[str]) -> tuple[float, dict[str, list[int]]]:
    """Every TCP port of ``hosts``, scanned from a namespace of its own on the lab's
    bridge (10.99.0.200, no cluster member, not the control node); removed after."""
    prefix = json.loads((lab_dir / "lab.json").read_text())["prefix"]
    ns, outer = f"{prefix}-scan", f"{prefix}scan"
    _run(["ip", "netns", "add", ns])
    try:
        _run(["ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns])
        _run(["ip", "link", "set", outer, "netns", f"{prefix}-sw"])
        sw = ["ip", "netns", "exec", f"{prefix}-sw"]
        _run([*sw, "ip", "link", "set", outer, "master", "br0", "up"])
        inside = ["ip", "netns", "exec", ns]
        _run([*inside, "ip", "addr", "add", "10.99.0.200/24", "dev", "eth0"])
        _run([*inside, "ip", "link", "set", "eth0", "up"])
        _run([*inside, "ip", "link", "set", "lo", "up"])
        t0 = time.monotonic()
        confirm = ",".join(map(str, (22, 9100, RPC_PORT, HTTP_PORT, 6379, 8265, 10001)))
        done = _run([*inside, sys.executable, "-m", "tests.e2e.portscan", *hosts,
                     "--confirm", confirm], timeout=600)  # fmt: skip
        return time.monotonic() - t0, json.loads(done.stdout)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False, timeout=30)


@pytest.mark.llama
def test_postinstall_and_smoke_typed_on_this_machine_reach_the_lab_through_its_leg_only(
    lab_dir: Path, rootfs_built: BuiltRootfs
) -> None:
    """`postinstall run`, `smoke` and `ssh` typed here, not through `lab exec`, work on a
    2-node container lab: this machine has a leg on the lab's bridge. An nftables counter
    on the output hook sees no packet for the lab's subnet leave by the default route's
    device, nor by any device but the leg. After `lab down` the leg and its route are
    gone and a post-install is refused here, before any packet. The head's node exporter
    answers the control node but not the worker (post-install's node firewall)."""
    for tool in ("systemd-nspawn", "nft", "ssh"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing (scripts/setup installs it)")
    default = json.loads(_run(["ip", "-j", "route", "show", "default"]).stdout or "[]")
    out_dev = default[0]["dev"] if default else "lo"
    state = lab_dir / "state"
    (state / "images").mkdir(parents=True)
    shutil.copytree(rootfs_built.image, state / "images" / rootfs_built.image.name)
    config = str(lab_dir / "provisioner.toml")
    _nft("delete", "table", "inet", GUARD)
    made = _nft(
        script=f"table inet {GUARD} {{ chain out {{ type filter hook output priority 0; "
        f'ip daddr {LAB_SUBNET} oifname "{out_dev}" counter comment "default"; }}; }}\n'
    )
    assert made.returncode == 0, made.stderr
    try:
        t0 = time.monotonic()
        up = run_cli(
            "lab", "up", "--dir", str(lab_dir), "--kind", "container", "--nodes", "2",
            "--image", "debian-bookworm", "--timeout", "300",
        )  # fmt: skip
        assert up.returncode == 0, up.stderr[-6000:]
        boot_s = time.monotonic() - t0
        leg = json.loads((lab_dir / "lab.json").read_text())["host_leg"]
        assert leg and "this machine on the lab: 10.99.0.254" in up.stderr, up.stderr[-3000:]
        added = _nft(
            script=f'add rule inet {GUARD} out ip daddr {LAB_SUBNET} oifname != "{leg}" '
            f'counter comment "not-leg"\n'
            f'add rule inet {GUARD} out ip daddr {LAB_SUBNET} oifname "{leg}" '
            f'counter comment "leg"\n'
        )
        assert added.returncode == 0, added.stderr
        route = json.loads(_run(["ip", "-j", "route", "get", "10.99.0.5"]).stdout)
        assert route[0]["dev"] == leg

        llama_cluster(lab_dir, "duo", "ctr1", "ctr2")

        t0 = time.monotonic()
        post = run_cli("--config", config, "postinstall", "run", "duo")  # typed here
        postinstall_s = time.monotonic() - t0
        assert post.returncode == 0, post.stderr[-6000:]
        t0 = time.monotonic()
        smoke = run_cli("--config", config, "smoke", "duo", "--json", "--no-restart")
        smoke_s = time.monotonic() - t0
        assert smoke.returncode == 0, smoke.stderr[-4000:]
        report = json.loads(smoke.stdout)
        assert report["passed"], report["checks"]

        head = node_json(lab_dir, "ctr1")
        known = lab_dir / "known_hosts"
        keys = head["inventory"]["inventory"]["ssh_host_keys"]
        known.write_text("".join(f"{head['ip']} {k['type']} {k['public_key']}\n" for k in keys))
        login = subprocess.run(
            ["ssh", "-i", str(state / "ssh" / "id_ed25519"), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
             "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20",
             f"root@{head['ip']}", "hostname"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (login.returncode, login.stdout.strip()) == (0, "ctr1"), login.stderr
        # Post-install's node firewall: the head's node exporter answers the control node
        # (the appliance's namespace), not a member of its own cluster.
        metrics = f"http://{head['ip']}:9100/metrics"
        curl = "curl -s -o /dev/null --max-time 3 -w '%{http_code}' "
        control = run_cli("lab", "exec", "--dir", str(lab_dir), "--", "sh", "-c", curl + metrics)
        assert control.stdout == "200", control.stdout + control.stderr
        member = ssh_node(lab_dir, "ctr2", f'{curl}{metrics}; echo " rc=$?"')
        assert member.stdout.split()[-1] == "rc=28", member.stdout + member.stderr  # dropped
        # A port scan from a machine on the lab's network that is no member (issue 20,
        # item 7): of every TCP port of both nodes, only sshd answers; nothing of
        # llama.cpp (the head's server, the workers' RPC) nor the node exporter.
        worker = node_json(lab_dir, "ctr2")
        scan_s, open_ports = _scan_from_outside(lab_dir, [head["ip"], worker["ip"]])
        assert open_ports == {head["ip"]: [22], worker["ip"]: [22]}, open_ports
        print(f"port scan of 2 x 65535 ports from a non-member: {open_ports} in {scan_s:.1f} s")
        counts = _guard_counters()
        print(
            f"host-typed: boot {boot_s:.1f} s, post-install {postinstall_s:.1f} s, smoke "
            f"{smoke_s:.1f} s; packets for {LAB_SUBNET}: {counts}"
        )
        assert counts["default"] == 0 and counts["not-leg"] == 0, counts
        assert counts["leg"] > 0, counts

        down = run_cli("lab", "down", "--dir", str(lab_dir), timeout=120)
        assert down.returncode == 0, down.stderr
        links = json.loads(_run(["ip", "-j", "link", "show"]).stdout)
        assert leg not in {link["ifname"] for link in links}
        assert overlapping_routes(host_routes(), IPv4Network(LAB_SUBNET)) == []
        late = run_cli("--config", config, "postinstall", "run", "duo", "--no-build")
        assert late.returncode == 1
        assert "ctr1: failed: ctr1 " in late.stderr and "not on 10.99.0.0/24" in late.stderr
        assert "Traceback" not in late.stderr
        assert _guard_counters()["default"] == 0
    finally:
        _nft("delete", "table", "inet", GUARD)
