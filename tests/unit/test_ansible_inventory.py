"""Ansible's dynamic inventory from node records (provisioner/ansible_inventory.py): pure.
Debian's ansible-inventory reads it in tests/integration/test_ansible_inventory.py."""

from __future__ import annotations

from pathlib import Path

from provisioner.ansible_inventory import (
    Access,
    Host,
    Membership,
    group_name,
    inventory,
    known_hosts,
    script,
)

ACCESS = Access(
    Path("/var/lib/provisioner/ssh/id_ed25519"), Path("/var/lib/provisioner/ssh/known_hosts")
)
HOSTS = [
    Host("node0", "10.10.0.10", "52:54:00:00:00:10", "serving", "nvidia-rtx-ampere",
         ({"slug": "nvidia-rtx-3060", "name": "GA106 [GeForce RTX 3060]", "count": 1},),
         {"compute_capability": "8.6"}, ("ssh-ed25519 AAAAkey0",)),
    Host("node1", "10.10.0.11", "52:54:00:00:00:11", "serving", "nvidia-rtx-ampere",
         host_keys=("ssh-ed25519 AAAAkey1",)),
    Host("node2", "10.10.0.12", "52:54:00:00:00:12", "matched", "generic-cpu"),
]  # fmt: skip
CLUSTERS = [Membership("llama-3060", "node0", ("node1", "gone")), Membership("other", "nodeX")]


def test_groups_by_profile_cluster_role_and_state() -> None:
    doc = inventory(HOSTS, CLUSTERS, ACCESS)
    assert doc["all"]["hosts"] == ["node0", "node1", "node2"]
    assert doc["profile_nvidia_rtx_ampere"]["hosts"] == ["node0", "node1"]
    assert doc["cluster_llama_3060"]["hosts"] == ["node0", "node1"]  # "gone" is no host
    assert doc["role_head"]["hosts"] == ["node0"] and doc["role_worker"]["hosts"] == ["node1"]
    assert doc["state_serving"]["hosts"] == ["node0", "node1"]
    assert doc["state_matched"]["hosts"] == ["node2"]
    assert "cluster_other" not in doc  # its head is no host here
    assert set(doc["all"]["children"]) == set(doc) - {"all", "_meta"}


def test_host_vars_say_how_to_reach_the_node_and_what_it_is() -> None:
    doc = inventory(HOSTS, CLUSTERS, ACCESS)
    node0 = doc["_meta"]["hostvars"]["node0"]
    assert node0["ansible_host"] == "10.10.0.10" and node0["ansible_user"] == "root"
    assert node0["ansible_ssh_private_key_file"] == "/var/lib/provisioner/ssh/id_ed25519"
    assert "StrictHostKeyChecking=yes" in node0["ansible_ssh_common_args"]
    assert (
        "UserKnownHostsFile=/var/lib/provisioner/ssh/known_hosts"
        in node0["ansible_ssh_common_args"]
    )
    assert node0["provisioner_accelerators"][0]["slug"] == "nvidia-rtx-3060"
    assert node0["provisioner_gpu"] == {"compute_capability": "8.6"}
    assert node0["provisioner_clusters"] == [{"cluster": "llama-3060", "role": "head"}]
    assert doc["_meta"]["hostvars"]["node2"]["provisioner_clusters"] == []


def test_known_hosts_pins_each_key_under_name_and_address() -> None:
    assert known_hosts(HOSTS) == (
        "node0,10.10.0.10 ssh-ed25519 AAAAkey0\nnode1,10.10.0.11 ssh-ed25519 AAAAkey1\n"
    )


def test_group_names_and_the_script() -> None:
    assert group_name("profile", "amd-ryzen-ai-npu") == "profile_amd_ryzen_ai_npu"
    assert script("/usr/bin/provisioner", "/etc/p.toml") == (
        '#!/bin/sh\nexec /usr/bin/provisioner --config /etc/p.toml ansible inventory "$@"\n'
    )
