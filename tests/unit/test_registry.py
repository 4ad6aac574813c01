from __future__ import annotations

import json
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.errors import IllegalTransition, RegistryError
from provisioner.records import EventKind, LeaseKind, Sighting, TokenCheck
from provisioner.registry import SCHEMA_VERSION, Registry
from provisioner.states import NodeEvent, NodeState

MAC = "52:54:00:12:34:56"


@pytest.fixture
def reg(registry_location: Path | str) -> Iterator[Registry]:
    """A new registry on each backend: SQLite, then PostgreSQL (tests/pg_server.py)."""
    registry = Registry(registry_location)
    yield registry
    registry.close()


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
    reg.issue_boot_token(MAC, "first-Xq7", asked_by="10.0.0.5", bound_to=None, expires=9e9)
    assert reg.check_boot_token(MAC, "first-Xq7")
    reg.issue_boot_token(MAC, "second-Xq7", asked_by="10.0.0.5", bound_to=None, expires=9e9)
    assert not reg.check_boot_token(MAC, "first-Xq7")
    assert reg.check_boot_token(MAC, "second-Xq7")
    assert not reg.check_boot_token("52:54:00:00:00:09", "second-Xq7")
    reg.close()
    for file in tmp_path.glob("registry.sqlite3*"):
        assert b"second-Xq7" not in file.read_bytes()


def test_a_boot_token_expires_binds_to_its_first_user_and_reports_once(reg: Registry) -> None:
    reg.issue_boot_token(MAC, "t", asked_by="10.0.0.5", bound_to=None, expires=200.0, now=100.0)
    use = reg.use_boot_token
    assert use(MAC, "nope", source="10.0.0.5", now=101.0) is TokenCheck.UNKNOWN
    assert use(MAC, "t", source="10.0.0.7", now=101.0) is TokenCheck.OK  # bound to .7 now
    assert use(MAC, "t", source="10.0.0.5", now=102.0) is TokenCheck.ELSEWHERE
    assert use(MAC, "t", source="10.0.0.7", spend=True, now=103.0) is TokenCheck.OK
    assert use(MAC, "t", source="10.0.0.7", spend=True, now=104.0) is TokenCheck.SPENT
    assert use(MAC, "t", source="10.0.0.7", now=105.0) is TokenCheck.OK  # keys: its life long
    assert use(MAC, "t", source="10.0.0.7", now=200.0) is TokenCheck.EXPIRED
    assert not reg.check_boot_token(MAC, "t", now=200.0)
    kept = reg.boot_token(MAC)
    assert kept is not None and (kept.asked_by, kept.bound_to, kept.spent) == (
        "10.0.0.5",
        "10.0.0.7",
        103.0,
    )
    assert kept.live(199.0) and not kept.live(200.0)
    reg.issue_boot_token(MAC, "u", asked_by="10.0.0.5", bound_to="10.0.0.5", expires=400.0)
    assert use(MAC, "u", source="10.0.0.7", now=300.0) is TokenCheck.ELSEWHERE
    assert use(MAC, "u", source="10.0.0.5", spend=True, now=300.0) is TokenCheck.OK


def test_leases_and_dhcp_say_where_a_node_booted_from(reg: Registry) -> None:
    assert not reg.has_dhcp(MAC) and reg.bound_address(MAC) is None
    reg.commit_lease(MAC, IPv4Address("10.0.0.100"), expires=2000.0, kind=LeaseKind.OFFERED)
    assert reg.has_dhcp(MAC) and reg.bound_address(MAC, now=1000.0) is None
    reg.commit_lease(MAC, IPv4Address("10.0.0.100"), expires=2000.0, kind=LeaseKind.BOUND)
    assert reg.bound_address(MAC, now=1000.0) == "10.0.0.100"
    assert reg.bound_address(MAC, now=2000.0) is None  # expired
    other = "52:54:00:00:00:03"
    reg.add_event(other, EventKind.DHCP, {"msg": "discover"})
    assert reg.has_dhcp(other) and not reg.has_dhcp("52:54:00:00:00:04")
    node = reg.touch_node(other, dhcp_ip="10.0.0.44")
    assert node.ip is None and reg.dhcp_address(other) == "10.0.0.44"
    assert reg.node_by_ip("10.0.0.44") == node  # its TFTP and files land on its timeline
    reg.set_ip(other, "10.0.0.45")
    assert reg.node_by_ip("10.0.0.45") == reg.node(other)


def test_a_held_report_is_kept_aside_with_what_it_changes(reg: Registry) -> None:
    reg.touch_node(MAC)
    reg.store_inventory(MAC, '{"v": 1}')
    changes = {"what": "profile", "profile_before": "a", "profile_after": "b"}
    reg.hold_inventory(MAC, '{"v": 2}', ip="10.0.0.9", changes=changes, now=50.0)
    held = reg.pending_inventory(MAC)
    assert held is not None and (held.data, held.ip, held.received) == (
        '{"v": 2}',
        "10.0.0.9",
        50.0,
    )
    assert held.changes == changes
    assert reg.inventory_document(MAC) == '{"v": 1}'
    reported, event = reg.events(MAC)[-2:]
    assert reported.kind is EventKind.INVENTORY and reported.detail["held"] is True
    assert event.kind is EventKind.APPROVAL and event.detail == {"status": "pending", **changes}
    reg.drop_pending_inventory(MAC)
    assert reg.pending_inventory(MAC) is None


def test_the_database_and_its_folder_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    reg = Registry(state / "registry.sqlite3")
    reg.touch_node(MAC)  # a write: the -wal and -shm files exist now
    modes = {f.name: f.stat().st_mode & 0o777 for f in state.iterdir()}
    assert modes == {
        "registry.sqlite3": 0o600,
        "registry.sqlite3-wal": 0o600,
        "registry.sqlite3-shm": 0o600,
    }
    assert state.stat().st_mode & 0o777 == 0o700
    reg.close()
    # An older install's file (0644) is made private when it is opened.
    (state / "registry.sqlite3").chmod(0o644)
    Registry(state / "registry.sqlite3").close()
    assert (state / "registry.sqlite3").stat().st_mode & 0o777 == 0o600


def test_serve_makes_its_state_folder_private(tmp_path: Path) -> None:
    from provisioner.config import Mode, parse_config, render_config
    from provisioner.serve import BootServices

    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    text = render_config(
        interface="lo", address="127.0.0.1/8", mode=Mode.PROXY, dhcp_range=None, state_dir=state
    )
    services = BootServices(parse_config(text))
    services.registry.close()
    assert state.stat().st_mode & 0o777 == 0o700


# The registry as version 1 shipped it: its nodes table, with the boot token inline.
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE nodes (mac TEXT PRIMARY KEY, hostname TEXT UNIQUE, state TEXT NOT NULL,
    profile TEXT, ip TEXT, firmware TEXT, arch INTEGER, boot_token TEXT,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, image TEXT);
CREATE TABLE inventories (mac TEXT PRIMARY KEY, received REAL NOT NULL, data TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '1');
INSERT INTO nodes (mac, state, ip, boot_token, first_seen, last_seen)
    VALUES ('52:54:00:12:34:56', 'enrolled', '10.0.0.5', 'abc', 1.0, 2.0);
INSERT INTO inventories VALUES ('52:54:00:12:34:56', 1.0, '{"v": 1}');
"""


def test_a_version_1_database_opens_and_gains_the_new_storage(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
    reg = Registry(path)
    node = reg.node(MAC)
    assert node is not None and node.ip == "10.0.0.5" and reg.inventory_document(MAC) == '{"v": 1}'
    assert reg.boot_token(MAC) is None and not reg.check_boot_token(MAC, "abc")
    reg.issue_boot_token(MAC, "t", asked_by="10.0.0.5", bound_to=None, expires=9e9)
    reg.hold_inventory(MAC, '{"v": 2}', ip=None, changes={"what": "profile"})
    reg.touch_node(MAC, dhcp_ip="10.0.0.6")
    assert reg.check_boot_token(MAC, "t") and reg.pending_inventory(MAC) is not None
    assert reg.dhcp_address(MAC) == "10.0.0.6"
    reg.close()
    with sqlite3.connect(path) as db:
        version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
    assert json.loads(version) == SCHEMA_VERSION


def test_leases_survive_reopening(registry_location: Path | str) -> None:
    path = registry_location
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
    again.close()


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
    reg.issue_boot_token(MAC, "t", asked_by="10.0.0.100", bound_to=None, expires=9e9)
    reg.hold_inventory(MAC, "{}", ip=None, changes={"what": "profile"})
    reg.forget(MAC)
    assert reg.node(MAC) is None and reg.events(MAC) == [] and reg.inventory_document(MAC) is None
    assert reg.active_leases() == {}
    assert reg.boot_token(MAC) is None and reg.pending_inventory(MAC) is None


def test_a_read_only_registry_refuses_writes(registry_location: Path | str) -> None:
    Registry(registry_location).close()  # made, and brought up to date
    ro = Registry(registry_location, readonly=True)
    assert ro.nodes() == []
    with pytest.raises(RegistryError, match="read-only"):
        ro.touch_node(MAC)
    ro.close()


def test_a_taken_hostname_is_refused_on_both_backends(reg: Registry) -> None:
    reg.touch_node(MAC)
    reg.touch_node("52:54:00:12:34:57")
    reg.set_hostname(MAC, "node0")
    with pytest.raises(RegistryError, match="taken"):
        reg.set_hostname("52:54:00:12:34:57", "node0")
    assert reg.node("52:54:00:12:34:57") is not None  # the failed transaction left it whole
    reg.set_hostname("52:54:00:12:34:57", "node1")


def test_a_lease_another_mac_holds_is_not_taken(reg: Registry) -> None:
    """Two serves sharing a registry (issue 23): the second to commit an address another
    MAC holds unexpired is told no, and nothing changes; an expired one is taken."""
    other = "52:54:00:12:34:99"
    ip = IPv4Address("10.0.0.100")
    assert reg.commit_lease(MAC, ip, expires=2000.0, kind=LeaseKind.OFFERED, now=1000.0)
    assert not reg.commit_lease(other, ip, expires=2500.0, kind=LeaseKind.BOUND, now=1500.0)
    held = reg.lease_of(ip)
    assert held is not None and (held.mac, held.expires, held.kind) == (
        MAC,
        2000.0,
        LeaseKind.OFFERED,
    )
    assert reg.commit_lease(MAC, ip, expires=3000.0, kind=LeaseKind.BOUND, now=1500.0)  # renewal
    assert reg.commit_lease(other, ip, expires=9000.0, kind=LeaseKind.BOUND, now=3000.0)  # expired
    held = reg.lease_of(ip)
    assert held is not None and held.mac == other
    assert reg.lease_of(IPv4Address("10.0.0.1")) is None


_SIGHTINGS = st.builds(
    Sighting,
    mac=st.sampled_from(["02:00:00:00:00:01", "02:00:00:00:00:02"]),
    now=st.floats(1000, 2000),
    firmware=st.sampled_from([None, "bios", "uefi", "ipxe"]),
    arch=st.sampled_from([0, 7]),
    firmware_is_guess=st.booleans(),
    dhcp_ip=st.sampled_from([None, "10.0.0.5", "10.0.0.6"]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_SIGHTINGS, max_size=8))
def test_a_batch_of_sightings_is_what_recording_them_in_order_gives(
    sightings: list[Sighting],
) -> None:
    """seen_many sends one statement per kind of sighting (DHCP's batch), and ends where
    recording them one at a time, in order, would."""
    with tempfile.TemporaryDirectory() as tmp:
        one, batch = Registry(Path(tmp) / "one.sqlite3"), Registry(Path(tmp) / "batch.sqlite3")
        for s in sightings:
            one.touch_node(s.mac, firmware=s.firmware, arch=s.arch, now=s.now,
                     firmware_is_guess=s.firmware_is_guess, dhcp_ip=s.dhcp_ip)  # fmt: skip
        for mac in {s.mac for s in sightings}:  # the first and last seen, in any order
            times = [s.now for s in sightings if s.mac == mac]
            one.execute("UPDATE nodes SET first_seen = ?, last_seen = ? WHERE mac = ?",
                        [(min(times), max(times), mac)])  # fmt: skip
        batch.seen_many(sightings)
        columns = "mac, state, first_seen, last_seen, firmware, arch, dhcp_ip"
        read = f"SELECT {columns} FROM nodes ORDER BY mac"
        assert batch.query(read) == one.query(read)
        one.close()
        batch.close()
