"""Debian's ansible-inventory reads `provisioner ansible inventory` as an executable
inventory (the script `--script` prints): groups by profile, cluster, role and state, and
each host's variables. (No SSH here: the ping against lab nodes is the e2e's.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from provisioner.records import Cluster
from provisioner.registry import Registry
from tests.integration.conftest import need, write_config


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_LOCAL_TEMP": str(cwd / "ansible-tmp"), "HOME": str(cwd)}
    return subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=120, env=env, cwd=cwd
    )


def test_ansible_inventory_reads_the_registry(tmp_path: Path) -> None:
    need("ansible-inventory")
    state = tmp_path / "state"
    config = tmp_path / "provisioner.toml"
    write_config(config, interface="lo", address="127.0.0.1/8", mode="proxy", state=state,
                 http_port=18080, bind="127.0.0.1")  # fmt: skip
    state.mkdir()
    registry = Registry(state / "registry.sqlite3")
    for i, profile in enumerate(("nvidia-rtx-ampere", "nvidia-rtx-ampere", "generic-cpu")):
        mac = f"52:54:00:00:00:1{i}"
        registry.touch_node(mac, ip=f"10.10.0.1{i}")
        registry.set_hostname(mac, f"node{i}")
        registry.set_profile(mac, profile)
    registry.touch_node("52:54:00:00:00:99")  # no name, no address: not a host
    cluster = Cluster("llama-3060", "llama-rpc", "smollm2", "node0", ("node1",))
    registry.save_cluster(cluster.name, cluster.to_json())
    registry.close()

    made = run(sys.executable, "-m", "provisioner.cli", "--config", str(config),
               "ansible", "inventory", "--script", cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr
    script = tmp_path / "inventory"
    script.write_text(made.stdout)
    script.chmod(0o755)

    graph = run("ansible-inventory", "-i", str(script), "--graph", cwd=tmp_path)
    assert graph.returncode == 0, graph.stderr
    lines = [line.strip(" |-") for line in graph.stdout.splitlines()]
    assert lines[0] == "@all:"
    for group, members in (
        ("cluster_llama_3060", ["node0", "node1"]),
        ("role_head", ["node0"]),
        ("role_worker", ["node1"]),
        ("profile_nvidia_rtx_ampere", ["node0", "node1"]),
        ("profile_generic_cpu", ["node2"]),
    ):
        at = lines.index(f"@{group}:")
        assert lines[at + 1 : at + 1 + len(members)] == members, graph.stdout
    assert not any("52:54:00:00:00:99" in line for line in lines)

    host = run("ansible-inventory", "-i", str(script), "--host", "node1", cwd=tmp_path)
    assert host.returncode == 0, host.stderr
    hostvars = json.loads(host.stdout)
    assert hostvars["ansible_host"] == "10.10.0.11" and hostvars["ansible_user"] == "root"
    assert hostvars["provisioner_clusters"] == [{"cluster": "llama-3060", "role": "worker"}]
    assert f"UserKnownHostsFile={state}/ssh/known_hosts" in hostvars["ansible_ssh_common_args"]
    assert (state / "ssh" / "known_hosts").is_file()  # written by --list, for SSH to use
