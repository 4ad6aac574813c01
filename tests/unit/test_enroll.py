"""Enrollment with the shipped profiles: an agent report in, a matched, named node out."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from provisioner.boot.routes_boot import inventory_document
from provisioner.config import DEFAULT_HWPROFILES
from provisioner.discovery import schema
from provisioner.discovery.model import Inventory, SshHostKey
from provisioner.enroll.matching import (
    HOLDS_FOR_APPROVAL,
    Enroller,
    Review,
    approve,
    receive,
    review,
)
from provisioner.profiles import ProfileError
from provisioner.records import EventKind, Node
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


def test_a_reload_on_one_serve_is_followed_by_another_sharing_the_registry(
    tmp_path: Path, profiles: Path
) -> None:
    """Two serves, one registry (issue 23): a reload on one (API or SIGHUP) is seen by
    the other's follow(), once; a reload it makes because of it is not announced back."""
    path = tmp_path / "registry.sqlite3"
    here, there = Registry(path), Registry(path)
    one, two = Enroller(here, profiles, "node{n}"), Enroller(there, profiles, "node{n}")
    assert two.follow() is None  # nobody reloaded yet
    (profiles / "qemu-lab.yaml").unlink()
    one.reload()
    assert two.profiles.get("qemu-lab") is not None  # not yet
    assert two.follow() == []
    assert two.profiles.get("qemu-lab") is None  # followed
    assert two.follow() is None and one.follow() is None  # no ping-pong
    (profiles / "broken.yaml").write_text("name: x\nversion: 1\nbogus_key: 3\n")
    with pytest.raises(ProfileError):
        two.reload()  # refused: nothing announced
    assert one.follow() is None
    here.close()
    there.close()


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


# ------------------------------------------------------------- reports held for approval


def with_key(name: str, seed: int) -> str:
    """The agent's report ``name`` with one SSH host key (an image's report has some)."""
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(seed, seed + 32))
    raw = (AGENT / name).read_bytes() + b"==> ssh <==\nkey=ssh-ed25519 "
    raw += base64.b64encode(blob) + b" root@node0\n"
    return json.dumps(inventory_document(raw, "text/plain; charset=utf-8"))


def keys_of(reg: Registry, mac: str) -> list[str]:
    inventory = reg.inventory(mac)
    assert inventory is not None
    return [k.fingerprint for k in inventory.ssh_host_keys]


def enrolled(reg: Registry, enroller: Enroller, doc: str, *, ip: str | None = None) -> None:
    """A: reported once (trusted: its first report), matched and enrolled."""
    reg.touch_node(A, ip=ip)
    assert receive(reg, enroller, A, doc, ip=None).held is None
    reg.transition(A, NodeEvent.ENROLL, reason="test")


def test_a_first_report_is_trusted_keys_profile_and_all(setup: tuple[Registry, Enroller]) -> None:
    reg, enroller = setup
    reg.touch_node(A)
    got = receive(reg, enroller, A, with_key("lab-qemu-q35-bios.txt", 1), ip="10.0.0.7")
    assert got.held is None and got.node.state is NodeState.MATCHED
    assert got.node.profile == "qemu-lab" and got.node.ip == "10.0.0.7"
    # Not enrolled yet: another report (other keys) is still taken as it comes.
    got = receive(reg, enroller, A, with_key("lab-qemu-q35-bios.txt", 2), ip="10.0.0.8")
    assert got.held is None and got.node.ip == "10.0.0.8" and reg.pending_inventory(A) is None


def test_an_enrolled_nodes_first_host_keys_are_trusted(setup: tuple[Registry, Enroller]) -> None:
    """The lab's path: discovery reports no keys, the node's image reports its first."""
    reg, enroller = setup
    enrolled(reg, enroller, agent_doc("lab-qemu-q35-bios.txt"))
    got = receive(reg, enroller, A, with_key("lab-qemu-q35-bios.txt", 1), ip=None)
    assert got.held is None and got.node.state is NodeState.ENROLLED and keys_of(reg, A)


def test_an_enrolled_nodes_new_host_keys_wait_for_approval(
    setup: tuple[Registry, Enroller],
) -> None:
    reg, enroller = setup
    enrolled(reg, enroller, with_key("lab-qemu-q35-bios.txt", 1))
    reg.transition(A, NodeEvent.SMOKE_PASS)
    old = keys_of(reg, A)
    got = receive(reg, enroller, A, with_key("lab-qemu-q35-bios.txt", 2), ip=None)
    assert got.held is not None and got.held.what == "ssh host keys"
    node = reg.node(A)
    assert node is not None and node.state is NodeState.SERVING and keys_of(reg, A) == old
    held = reg.events(A)[-1]
    assert held.kind is EventKind.APPROVAL and held.detail["status"] == "pending"
    assert held.detail["keys_before"] == old[0] and held.detail["keys_after"] != old[0]

    done = approve(reg, enroller, A)
    assert done is not None and done.changes["keys_after"] == held.detail["keys_after"]
    assert keys_of(reg, A) == [held.detail["keys_after"]]
    assert done.node.state is NodeState.ENROLLED  # a new report: post-install runs again
    kinds = [(e.kind, e.detail.get("status")) for e in reg.events(A)]
    assert (EventKind.APPROVAL, "approved") in kinds and reg.pending_inventory(A) is None
    assert approve(reg, enroller, A) is None  # nothing held any more
    # Held, then a report that changes nothing: the held one is stale, dropped.
    assert receive(reg, enroller, A, with_key("lab-qemu-q35-bios.txt", 3), ip=None).held
    assert receive(reg, enroller, A, with_key("lab-qemu-q35-bios.txt", 2), ip=None).held is None
    assert reg.pending_inventory(A) is None


def test_a_report_that_would_change_the_profile_or_address_is_held(
    setup: tuple[Registry, Enroller],
) -> None:
    reg, enroller = setup
    enrolled(reg, enroller, agent_doc("lab-qemu-q35-bios.txt"), ip="10.0.0.7")
    other = json.dumps({"format": "json", "inventory": schema.to_json(Inventory()), "problems": []})
    got = receive(reg, enroller, A, other, ip="10.0.0.66")
    assert got.held == Review(profile=("qemu-lab", "generic-cpu"), ip=("10.0.0.7", "10.0.0.66"))
    node = reg.node(A)
    assert node is not None and (node.profile, node.ip) == ("qemu-lab", "10.0.0.7")
    detail = reg.events(A)[-1].detail
    assert detail["what"] == "profile, address" and detail["ip_after"] == "10.0.0.66"
    done = approve(reg, enroller, A)
    assert done is not None and (done.node.profile, done.node.ip) == ("generic-cpu", "10.0.0.66")


def node_in(state: NodeState, profile: str | None = "qemu-lab", ip: str | None = None) -> Node:
    return Node(A, "node0", state, profile, ip, "bios", 0, 0.0, 0.0)


KEY1, KEY2 = SshHostKey("ssh-ed25519", "SHA256:one"), SshHostKey("ssh-ed25519", "SHA256:two")


@pytest.mark.parametrize(
    ("node", "before", "after", "profile", "ip", "expected"),
    [
        # Not enrolled yet: trust on first use, whatever changes.
        (node_in(NodeState.DISCOVERED), (KEY1,), (KEY2,), "other", "10.0.0.9", None),
        (node_in(NodeState.ENROLLING), (KEY1,), (KEY2,), "other", None, None),
        # Enrolled: the same keys, profile and address pass.
        (node_in(NodeState.ENROLLED, ip="10.0.0.7"), (KEY1,), (KEY1,), "qemu-lab", "10.0.0.7",
         None),
        # First keys, first profile, first address: trusted.
        (node_in(NodeState.ENROLLED), (), (KEY1,), "qemu-lab", None, None),
        (node_in(NodeState.LOCAL, profile=None), (KEY1,), (KEY1,), "qemu-lab", "10.0.0.7", None),
        # What they had, changed: held.
        (node_in(NodeState.ENROLLED), (KEY1,), (KEY2,), "qemu-lab", None,
         Review(keys=(("SHA256:one",), ("SHA256:two",)))),
        (node_in(NodeState.FAILED), (KEY1,), (), "qemu-lab", None,
         Review(keys=(("SHA256:one",), ()))),
        (node_in(NodeState.DEGRADED, ip="10.0.0.7"), (KEY1,), (KEY1,), "other", "10.0.0.8",
         Review(profile=("qemu-lab", "other"), ip=("10.0.0.7", "10.0.0.8"))),
    ],
)  # fmt: skip
def test_review_holds_only_what_an_enrolled_node_had(
    node: Node,
    before: tuple[SshHostKey, ...],
    after: tuple[SshHostKey, ...],
    profile: str | None,
    ip: str | None,
    expected: Review | None,
) -> None:
    found = review(
        node, Inventory(ssh_host_keys=before), Inventory(ssh_host_keys=after),
        profile_after=profile, ip_after=ip,
    )  # fmt: skip
    assert found == expected
    assert (found is not None) <= (node.state in HOLDS_FOR_APPROVAL)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        # The key the control node issued, reported: nothing to approve, whatever before.
        ((KEY2,), (KEY1,), None),
        ((), (KEY1,), None),
        # No keys (the discovery image runs no sshd): no key change.
        ((KEY1,), (), None),
        # Anything else than the issued key: held, against the issued one.
        ((KEY1,), (KEY2,), Review(keys=(("SHA256:one",), ("SHA256:two",)))),
        ((KEY1,), (KEY1, KEY2), Review(keys=(("SHA256:one",), ("SHA256:one", "SHA256:two")))),
        ((), (KEY2,), Review(keys=(("SHA256:one",), ("SHA256:two",)))),
    ],
)  # fmt: skip
def test_review_with_an_issued_host_key_pins_that_key(
    before: tuple[SshHostKey, ...], after: tuple[SshHostKey, ...], expected: Review | None
) -> None:
    found = review(
        node_in(NodeState.SERVING), Inventory(ssh_host_keys=before),
        Inventory(ssh_host_keys=after), profile_after="qemu-lab", issued="SHA256:one",
    )  # fmt: skip
    assert found == expected


def test_node_approve_applies_a_held_report_and_says_what(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from provisioner.cli import main
    from provisioner.config import Mode, render_config, write_config

    state = tmp_path / "state"
    config = tmp_path / "provisioner.toml"
    text = render_config(
        interface="eth0", address="10.1.0.1/24", mode=Mode.FULL,
        dhcp_range="10.1.0.100-10.1.0.120", state_dir=state,
    )  # fmt: skip
    write_config(config, text)
    reg = Registry(state / "registry.sqlite3")
    enroller = Enroller(reg, DEFAULT_HWPROFILES, "node{n}")
    enrolled(reg, enroller, with_key("lab-qemu-q35-bios.txt", 1))
    assert main(["--config", str(config), "node", "approve", "node0"]) == 4  # refused
    assert "node0: nothing to approve" in capsys.readouterr().err
    assert receive(reg, enroller, A, with_key("lab-qemu-q35-bios.txt", 2), ip=None).held
    assert main(["--config", str(config), "node", "show", "node0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pending_approval"]["what"] == "ssh host keys"
    assert main(["--config", str(config), "node", "show", "node0"]) == 0
    assert "node approve" in capsys.readouterr().out
    assert main(["--config", str(config), "node", "approve", "node0"]) == 0
    assert capsys.readouterr().out == "node0: approved (ssh host keys); enrolled\n"
    assert reg.pending_inventory(A) is None
