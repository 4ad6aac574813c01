"""Enrollment with the shipped profiles: an agent report in, a matched, named node out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from provisioner.boot.routes_boot import inventory_document
from provisioner.config import DEFAULT_HWPROFILES
from provisioner.enroll.matching import Enroller
from provisioner.profiles import ProfileError
from provisioner.records import EventKind
from provisioner.registry import Registry
from provisioner.states import NodeEvent, NodeState

AGENT = Path(__file__).resolve().parents[1] / "fixtures" / "agent"
A, B, C = "52:54:00:99:00:01", "52:54:00:99:00:02", "52:54:00:99:00:03"


def agent_doc(name: str) -> str:
    """What the inventory POST stores for the agent's report (the same function)."""
    raw = (AGENT / name).read_bytes()
    return json.dumps(inventory_document(raw, "text/plain; charset=utf-8"))


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    target = tmp_path / "hwprofiles"
    shutil.copytree(DEFAULT_HWPROFILES, target)
    return target


@pytest.fixture
def setup(tmp_path: Path, profiles: Path) -> tuple[Registry, Enroller]:
    reg = Registry(tmp_path / "registry.sqlite3")
    return reg, Enroller(reg, profiles, "node{n}")


def arrive(reg: Registry, enroller: Enroller, mac: str, doc: str) -> None:
    reg.touch_node(mac)
    reg.store_inventory(mac, doc)
    enroller.on_inventory(mac)


def test_lab_vms_are_matched_to_qemu_lab_and_named_in_order(
    setup: tuple[Registry, Enroller],
) -> None:
    reg, enroller = setup
    arrive(reg, enroller, A, agent_doc("lab-qemu-q35-bios.txt"))
    arrive(reg, enroller, B, agent_doc("lab-qemu-q35-uefi.txt"))
    a, b = reg.node(A), reg.node(B)
    assert a is not None and b is not None
    assert (a.state, a.profile, a.hostname) == (NodeState.MATCHED, "qemu-lab", "node0")
    assert (b.state, b.profile, b.hostname) == (NodeState.MATCHED, "qemu-lab", "node1")
    event = [e for e in reg.events(A) if e.kind is EventKind.PROFILE][-1]
    assert event.detail["profile"] == "qemu-lab"
    # a second boot re-reports: same name, same profile
    arrive(reg, enroller, A, agent_doc("lab-qemu-q35-bios.txt"))
    again = reg.node(A)
    assert again is not None and (again.hostname, again.profile) == ("node0", "qemu-lab")


def test_an_inventory_we_cannot_fingerprint_is_unmatched(setup: tuple[Registry, Enroller]) -> None:
    reg, enroller = setup
    doc = json.dumps({"format": "json", "inventory": {"cpu": "x"}, "problems": []})
    arrive(reg, enroller, C, doc)
    node = reg.node(C)
    assert node is not None and node.state is NodeState.UNMATCHED and node.profile is None


def test_reload_shows_what_changed_and_a_bad_set_keeps_the_old(
    setup: tuple[Registry, Enroller], profiles: Path
) -> None:
    reg, enroller = setup
    arrive(reg, enroller, A, agent_doc("lab-qemu-q35-bios.txt"))
    (profiles / "broken.yaml").write_text("name: qemu-lab\nversion: 1\nbogus_key: 3\n")
    with pytest.raises(ProfileError) as info:
        enroller.reload()
    assert "broken.yaml:" in str(info.value)
    assert enroller.profiles.get("qemu-lab") is not None  # the last good set stays
    (profiles / "broken.yaml").unlink()
    (profiles / "qemu-lab.yaml").unlink()
    changes = enroller.reload()
    assert [(c.mac, c.before) for c in changes] == [(A, "qemu-lab")]
    node = reg.node(A)
    assert node is not None and node.profile == changes[0].after
    assert node.state is (NodeState.MATCHED if node.profile else NodeState.UNMATCHED)


def test_node_list_names_the_nearest_profiles_of_an_unmatched_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from provisioner.cli import main
    from provisioner.config import Mode, render_config, write_config

    state = tmp_path / "state"
    config = tmp_path / "provisioner.toml"
    write_config(
        config,
        render_config(
            interface="eth0",
            address="10.1.0.1/24",
            mode=Mode.PROXY,
            dhcp_range=None,
            state_dir=state,
        ),
    )
    reg = Registry(state / "registry.sqlite3")
    reg.touch_node(C)
    reg.store_inventory(C, "{}")
    reg.transition(C, NodeEvent.NO_MATCH)
    reg.add_event(
        C,
        EventKind.PROFILE,
        {
            "profile": None,
            "candidates": "qemu-lab, generic-cpu",
            "conflict": "qemu-lab, generic-cpu",
        },
    )
    assert main(["--config", str(config), "node", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["state"] == "unmatched"
    assert listed[0]["nearest"] == ["qemu-lab", "generic-cpu"]
    assert main(["--config", str(config), "node", "list"]) == 0
    assert "nearest: qemu-lab, generic-cpu" in capsys.readouterr().out
