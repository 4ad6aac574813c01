"""`node add|rename|boot|remove` through the real CLI, and the lifecycle they share with
the REST API (provisioner/enroll/lifecycle.py): what each refuses, with which status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner.cli import main
from provisioner.cli.common import Exit
from provisioner.enroll import lifecycle
from provisioner.errors import IllegalTransition, NameTaken, NodeNotFound, NotFound, Refused
from provisioner.names import UnsafeValue
from provisioner.profiles import Engine
from provisioner.records import Cluster, EventKind
from provisioner.registry import Registry
from provisioner.states import NodeEvent, NodeState

A, B = "aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "provisioner.toml"
    path.write_text(
        '[network]\ninterface = "lo"\naddress = "127.0.0.1/8"\nmode = "proxy"\n'
        f'[paths]\nstate_dir = "{tmp_path / "state"}"\n'
    )
    return path


def registry(config: Path) -> Registry:
    return Registry(config.parent / "state" / "registry.sqlite3")


def run(config: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--config", str(config), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_node_add_refuses_a_bad_name_and_a_known_mac_under_another(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(config, capsys, "node", "add", "bad name!", "--mac", A)
    assert code == Exit.USAGE and "RFC 1123" in err
    code, _, err = run(config, capsys, "node", "add", "n0", "--mac", "not-a-mac")
    assert code == Exit.USAGE and "not a MAC address" in err
    assert run(config, capsys, "node", "add", "n0", "--mac", A)[0] == Exit.OK
    # The same name again: fine (the power URL may change); another name: refused.
    assert run(config, capsys, "node", "add", "n0", "--mac", A, "--power", "manual:")[0] == 0
    code, _, err = run(config, capsys, "node", "add", "n1", "--mac", A.upper())
    assert code == Exit.REFUSED and f"{A} is node n0: --rename" in err
    assert registry(config).node(A).hostname == "n0"  # type: ignore[union-attr]
    # A name another MAC has: refused, even with --rename.
    assert run(config, capsys, "node", "add", "n1", "--mac", B)[0] == 0
    code, _, err = run(config, capsys, "node", "add", "n1", "--mac", A, "--rename")
    assert code == Exit.REFUSED and f"hostname 'n1' is taken by {B}" in err
    code, out, _ = run(config, capsys, "node", "add", "n2", "--mac", A, "--rename", "--json")
    assert code == 0 and json.loads(out)["hostname"] == "n2"


def test_rename_boot_and_remove(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, capsys, "node", "add", "n0", "--mac", A)[0] == 0
    code, out, _ = run(config, capsys, "node", "rename", "n0", "gpu0", "--json")
    assert code == 0 and json.loads(out) | {"hostname": "gpu0", "was": "n0"} == json.loads(out)
    code, _, err = run(config, capsys, "node", "rename", "gpu0", "Bad_Name")
    assert code == Exit.USAGE and "hostname 'Bad_Name'" in err
    code, _, err = run(config, capsys, "node", "rename", "nosuch", "x")
    assert code == Exit.NOT_FOUND and "no node nosuch" in err

    # new -> boot local is not a move the table has: refused, nothing changed.
    code, _, err = run(config, capsys, "node", "boot", "gpu0", "local")
    assert code == Exit.REFUSED and "new" in err
    reg = registry(config)
    reg.transition(A, NodeEvent.INVENTORY)
    code, out, _ = run(config, capsys, "node", "boot", "gpu0", "local", "--json")
    booted = json.loads(out)
    assert code == 0 and (booted["state"], booted["was"]) == ("local", "discovered")
    code, out, _ = run(config, capsys, "node", "boot", A, "network")
    assert code == 0 and "local -> enrolled" in out
    states = [e.detail for e in reg.events(A) if e.kind is EventKind.STATE]
    assert [(d["to"], d["why"]) for d in states[-2:]] == [("local", "cli"), ("enrolled", "cli")]
    assert run(config, capsys, "node", "boot", A, "disk")[0] == Exit.USAGE  # argparse

    code, _, err = run(config, capsys, "node", "remove", "gpu0")  # stdin is not a terminal
    assert code == Exit.USAGE and "--yes" in err and reg.node(A) is not None
    code, out, _ = run(config, capsys, "node", "remove", "gpu0", "--yes", "--json")
    assert code == 0 and json.loads(out)["removed"]["mac"] == A
    assert reg.node(A) is None and reg.events(A) == []
    assert run(config, capsys, "node", "remove", "gpu0", "--yes")[0] == Exit.NOT_FOUND
    assert run(config, capsys, "node", "show", "gpu0")[0] == Exit.NOT_FOUND


def test_a_cluster_member_is_neither_renamed_nor_removed(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite3")
    for mac, name in ((A, "head"), (B, "spare")):
        reg.touch_node(mac)
        reg.set_hostname(mac, name)
    reg.save_cluster("c1", Cluster("c1", Engine.LLAMA_RPC, "m", "head").to_json())
    with pytest.raises(NameTaken, match="cluster c1 names it"):
        lifecycle.rename(reg, "head", "head2")
    with pytest.raises(NameTaken, match="cluster remove c1 first"):
        lifecycle.remove(reg, A)
    with pytest.raises(NameTaken, match="taken by"):
        lifecycle.rename(reg, "spare", "head")
    with pytest.raises(UnsafeValue):
        lifecycle.rename(reg, "spare", "-x")
    assert lifecycle.rename(reg, "spare", "spare") == (reg.node(B), "spare")  # no change
    assert lifecycle.clusters_of(reg, lifecycle.find(reg, "head")) == ["c1"]
    assert lifecycle.remove(reg, "AA-BB-CC-DD-EE-02").hostname == "spare"
    with pytest.raises(NodeNotFound):
        lifecycle.find(reg, B)


def test_lifecycle_errors_carry_their_kind() -> None:
    assert issubclass(NodeNotFound, NotFound)
    assert issubclass(NameTaken, Refused) and issubclass(IllegalTransition, Refused)
    assert set(lifecycle.BOOT_EVENTS) == set(lifecycle.BootTarget)
    assert NodeState.LOCAL.value == lifecycle.BootTarget.LOCAL.value


def test_node_show_lists_the_disks_by_their_stable_names_and_marks_the_cache(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, capsys, "node", "add", "n0", "--mac", A)[0] == 0
    spare = "/dev/disk/by-id/virtio-lab-disk1"
    disks = [
        {"name": "vda", "size_bytes": 1 << 30, "serial": "lab-disk0",
         "ids": ["/dev/disk/by-id/virtio-lab-disk0"]},
        {"name": "vdb", "size_bytes": 1 << 30, "serial": "lab-disk1",
         "ids": [spare, "/dev/disk/by-path/pci-0000:00:05.0"]},
        {"name": "sda", "size_bytes": None},  # an older agent: no serial, no names
    ]  # fmt: skip
    doc = {"format": "json", "inventory": {"schema": "provisioner.inventory/1", "disks": disks}}
    reg = registry(config)
    reg.store_inventory(A, json.dumps(doc))
    reg.set_cache_disk(A, spare)
    code, out, _ = run(config, capsys, "node", "show", "n0")
    assert code == 0
    lines = out[out.index("disks (") : out.index("boot timeline")].splitlines()
    assert lines[1].split() == ["vda", "1.0", "GiB", "serial", "lab-disk0"]
    assert lines[2].strip() == "/dev/disk/by-id/virtio-lab-disk0"
    assert lines[3].split()[-3:] == ["(the", "cache", "disk)"] and "lab-disk1" in lines[3]
    assert [ln.strip() for ln in lines[4:6]] == [spare, "/dev/disk/by-path/pci-0000:00:05.0"]
    assert lines[6].split() == ["sda", "-", "serial", "-"]
