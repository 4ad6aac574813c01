from __future__ import annotations

import threading
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from provisioner.errors import IllegalTransition, RegistryError
from provisioner.records import EventKind, LeaseKind
from provisioner.registry import Registry
from provisioner.states import NodeEvent, NodeState

MAC = "52:54:00:12:34:56"


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry.sqlite3")


def test_first_sight_creates_a_new_node_and_refreshes_later(reg: Registry) -> None:
    node = reg.touch_node(MAC, firmware="bios", arch=0, now=100.0)
    assert (node.state, node.firmware, node.arch, node.first_seen) == (
        NodeState.NEW,
        "bios",
        0,
        100.0,
    )
    node = reg.touch_node(MAC, ip="10.0.0.5", now=105.0)
    assert (node.ip, node.firmware, node.first_seen, node.last_seen) == (
        "10.0.0.5",
        "bios",
        100.0,
        105.0,
    )
    assert [n.mac for n in reg.nodes()] == [MAC]


def test_ipxe_guess_does_not_override_the_firmware_seen_first(reg: Registry) -> None:
    reg.touch_node(MAC, firmware="uefi", arch=7)
    node = reg.touch_node(MAC, firmware="bios", arch=0, firmware_is_guess=True)
    assert node.firmware == "uefi"
    other = reg.touch_node("52:54:00:00:00:02", firmware="bios", arch=0, firmware_is_guess=True)
    assert other.firmware == "bios"


def test_inventory_moves_new_to_discovered_and_is_kept(reg: Registry) -> None:
    reg.touch_node(MAC)
    node = reg.store_inventory(MAC, '{"pci": []}')
    assert node.state is NodeState.DISCOVERED
    assert reg.inventory_document(MAC) == '{"pci": []}'
    kinds = [e.kind for e in reg.events(MAC)]
    assert kinds == [EventKind.INVENTORY, EventKind.STATE]
    assert reg.events(MAC)[-1].detail == {
        "from": "new",
        "to": "discovered",
        "why": "inventory received",
    }


def test_illegal_transition_changes_nothing(reg: Registry) -> None:
    reg.touch_node(MAC)
    with pytest.raises(IllegalTransition):
        reg.transition(MAC, NodeEvent.ENROLL)
    node = reg.node(MAC)
    assert node is not None and node.state is NodeState.NEW
    assert reg.events(MAC) == []


def test_unknown_node_transition_is_an_error(reg: Registry) -> None:
    with pytest.raises(RegistryError, match="no node"):
        reg.transition(MAC, NodeEvent.FAIL)


def test_lookup_by_hostname_and_ip(reg: Registry) -> None:
    reg.touch_node(MAC, ip="10.0.0.9")
    reg.set_hostname(MAC, "node0")
    assert reg.node("node0") == reg.node(MAC) == reg.node_by_ip("10.0.0.9")
    reg.touch_node("52:54:00:00:00:02")
    with pytest.raises(RegistryError, match="taken"):
        reg.set_hostname("52:54:00:00:00:02", "node0")


def test_boot_tokens_are_hashed_and_replaced_each_boot(reg: Registry, tmp_path: Path) -> None:
    reg.touch_node(MAC)
    reg.new_boot_token(MAC, "first")
    assert reg.check_boot_token(MAC, "first")
    reg.new_boot_token(MAC, "second")
    assert not reg.check_boot_token(MAC, "first")
    assert reg.check_boot_token(MAC, "second")
    assert not reg.check_boot_token("52:54:00:00:00:09", "second")
    assert b"second" not in (tmp_path / "registry.sqlite3").read_bytes()


def test_leases_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    reg = Registry(path)
    reg.touch_node(MAC)
    reg.commit_lease(MAC, IPv4Address("10.0.0.100"), expires=2000.0, kind=LeaseKind.OFFERED)
    reg.commit_lease(MAC, IPv4Address("10.0.0.101"), expires=5000.0, kind=LeaseKind.BOUND)
    reg.close()
    again = Registry(path)
    assert again.active_leases(now=1000.0) == {IPv4Address("10.0.0.101"): MAC}
    assert again.active_leases(now=6000.0) == {}
    node = again.node(MAC)
    assert node is not None and node.ip == "10.0.0.101"


def test_release_and_decline(reg: Registry) -> None:
    reg.commit_lease(MAC, IPv4Address("10.0.0.100"), expires=9e9, kind=LeaseKind.BOUND)
    reg.release_lease(MAC)
    assert reg.active_leases() == {}
    reg.decline(IPv4Address("10.0.0.100"), MAC, until=9e9)
    held = reg.active_leases()
    assert IPv4Address("10.0.0.100") in held and held[IPv4Address("10.0.0.100")] != MAC
    reg.release_lease(MAC)  # a client cannot release an address it declined
    assert IPv4Address("10.0.0.100") in reg.active_leases()


def test_concurrent_writers_from_threads(reg: Registry) -> None:
    def work(i: int) -> None:
        mac = f"52:54:00:00:01:{i:02x}"
        for _ in range(20):
            reg.touch_node(mac)
            reg.add_event(mac, EventKind.DHCP, {"msg": "discover"})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reg.nodes()) == 8
    assert all(len(reg.events(n.mac)) == 20 for n in reg.nodes())


def test_forget_removes_everything_about_a_node(reg: Registry) -> None:
    reg.touch_node(MAC)
    reg.store_inventory(MAC, "{}")
    reg.commit_lease(MAC, IPv4Address("10.0.0.100"), expires=9e9, kind=LeaseKind.BOUND)
    reg.forget(MAC)
    assert reg.node(MAC) is None and reg.events(MAC) == [] and reg.inventory_document(MAC) is None
    assert reg.active_leases() == {}
