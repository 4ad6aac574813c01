"""Who gets a boot token, what it is good for, and what a request may change: the boot
routes through FastAPI's in-process client, with an injected clock; the rules' pure
parts (token_refusal, EventBudget) table-driven."""

from __future__ import annotations

import re
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from provisioner.boot import routes_boot, routes_files
from provisioner.boot.http_context import AppContext
from provisioner.boot.ipxe import ScriptRenderer
from provisioner.boot.routes_boot import (
    BOOT_TOKEN_SECONDS,
    REFUSED_EVENTS_PER_MINUTE,
    EventBudget,
    token_refusal,
)
from provisioner.config import Mode, parse_config, render_config
from provisioner.discovery.model import SCHEMA
from provisioner.image.store import ImageStore
from provisioner.metrics import Metrics
from provisioner.records import BootToken, EventKind, LeaseKind
from provisioner.registry import Registry
from provisioner.states import NodeEvent

MAC = "52:54:00:aa:bb:02"
NODE, OTHER, SERVER = "10.30.0.100", "10.30.0.66", "10.30.0.1"
T0 = 1_000_000.0
KEY_A = "SHA256:" + "A" * 43
KEY_B = "SHA256:" + "B" * 43


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Site:
    """The boot routes (and the file routes) of one appliance, and a client per address."""

    def __init__(self, tmp_path: Path, mode: Mode):
        cfg = parse_config(
            render_config(
                interface="eth0", address=f"{SERVER}/24", mode=mode,
                dhcp_range="10.30.0.100-10.30.0.120" if mode is Mode.FULL else None,
                state_dir=tmp_path,
            )
        )  # fmt: skip
        cfg.image_dir.mkdir(parents=True)
        store = ImageStore(cfg.image_dir)
        store.publish_files("discovery", {"vmlinuz": b"K", "initrd": b"I"})
        root = {"vmlinuz": b"K", "initrd": b"I", "root.squashfs": b"R"}
        store.publish_files("debian-trixie", root)  # what an enrolled node boots
        self.clock = Clock()
        self.ctx = AppContext(cfg, Registry(cfg.registry_path), "api", Metrics(), ScriptRenderer())
        self.app = FastAPI()
        self.app.include_router(routes_boot.router(self.ctx, clock=self.clock))
        self.app.include_router(routes_files.router(self.ctx))

    @property
    def registry(self) -> Registry:
        return self.ctx.registry

    def client(self, address: str) -> TestClient:
        return TestClient(self.app, client=(address, 40000))

    def lease(self, address: str = NODE) -> None:
        """The node took a lease from us (full mode)."""
        expires = self.clock.now + 3600
        self.registry.commit_lease(MAC, IPv4Address(address), expires, LeaseKind.BOUND)

    def script(self, address: str, **headers: str) -> tuple[int, str | None]:
        """GET the node's script from ``address``: the status and its token (if any)."""
        r = self.client(address).get(f"/boot/{MAC}.ipxe", headers=headers)
        found = re.search(r"provisioner\.token=(\S+)", r.text)
        return r.status_code, found.group(1) if found else None

    def report(self, address: str, token: str, *keys: str) -> int:
        inventory = {
            "schema": SCHEMA, "firmware": "uefi", "memory_bytes": 8 << 30,
            "pci": [{"vendor": "10de", "device": "1b38"}],
            "ssh_host_keys": [{"type": "ssh-ed25519", "fingerprint": k} for k in keys],
        }  # fmt: skip
        auth = {"Authorization": f"Bearer {token}"}
        r = self.client(address).post(
            f"/api/v1/nodes/{MAC}/inventory", json=inventory, headers=auth
        )
        return r.status_code

    def keys(self, address: str, token: str) -> int:
        auth = {"Authorization": f"Bearer {token}"}
        return (
            self.client(address)
            .get(f"/api/v1/nodes/{MAC}/authorized_keys", headers=auth)
            .status_code
        )

    def refused(self) -> list[dict[str, object]]:
        return [dict(e.detail) for e in self.registry.events(MAC) if e.kind is EventKind.REFUSED]

    def ip(self) -> str | None:
        node = self.registry.node(MAC)
        assert node is not None
        return node.ip


@pytest.fixture
def full(tmp_path: Path) -> Site:
    site = Site(tmp_path, Mode.FULL)
    site.ctx.authorized_keys = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample provisioner@test"
    return site


@pytest.fixture
def proxy(tmp_path: Path) -> Site:
    site = Site(tmp_path, Mode.PROXY)
    site.registry.add_event(MAC, EventKind.DHCP, {"msg": "discover"})  # it PXE-booted here
    site.ctx.authorized_keys = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample provisioner@test"
    return site


def live(asked_by: str, *, expires: float = T0 + 60) -> BootToken:
    return BootToken(MAC, asked_by, None, T0, expires, None)


@pytest.mark.parametrize(
    ("asker", "dhcp", "latest", "needs_dhcp", "refused"),
    [
        # Full mode: the bound lease's holder, and only it.
        (NODE, NODE, None, True, None),
        (NODE, NODE, live(SERVER), True, None),  # the lab asked on its behalf: no matter
        (OTHER, NODE, None, True, "does not hold this MAC's DHCP lease"),
        (NODE, None, None, True, "holds no DHCP lease"),
        # Proxy mode: the address its DHCP request named, if seen; no second asker.
        (NODE, NODE, None, False, None),
        (OTHER, NODE, None, False, "is not the address this MAC's DHCP request named"),
        (OTHER, None, None, False, None),
        (OTHER, None, live(NODE), False, "a live boot token was given to another address"),
        (OTHER, OTHER, live(NODE), False, "a live boot token was given to another address"),
        (NODE, None, live(NODE), False, None),
        (OTHER, None, live(NODE, expires=T0), False, None),  # expired: no longer in the way
    ],
)
def test_who_gets_a_token(
    asker: str, dhcp: str | None, latest: BootToken | None, needs_dhcp: bool, refused: str | None
) -> None:
    why = token_refusal(asker, dhcp, latest, T0, needs_dhcp=needs_dhcp)
    assert (why is None) == (refused is None)
    assert refused is None or (why is not None and refused in why)


def test_the_event_budget_refills_each_window() -> None:
    clock = Clock()
    budget = EventBudget(2, 60.0, clock)
    assert [budget.take(MAC) for _ in range(3)] == [True, True, False]
    assert budget.take("52:54:00:00:00:09")  # per node
    clock.now += 59.9
    assert not budget.take(MAC)
    clock.now += 0.1
    assert budget.take(MAC)


# ------------------------------------------------------------- full mode


def test_another_address_gets_no_token_and_moves_nothing(full: Site) -> None:
    full.lease()
    code, token = full.script(NODE)
    assert code == 200 and token is not None and full.ip() == NODE
    code, stolen = full.script(OTHER)
    assert (code, stolen) == (403, None)
    assert full.ip() == NODE
    assert full.refused()[-1]["client"] == OTHER
    assert full.registry.check_boot_token(MAC, token, now=T0)  # the node's still stands
    assert full.ctx.metrics.value("provisioner_http_refused_total", reason="boot-address") == 1


def test_a_mac_that_never_network_booted_here_gets_404_and_no_node(full: Site) -> None:
    assert full.script(NODE)[0] == 404
    assert full.registry.node(MAC) is None and full.registry.events(MAC) == []
    full.registry.add_event(MAC, EventKind.DHCP, {"msg": "discover"})  # DHCP, no lease yet
    assert full.script(NODE)[0] == 403
    assert full.registry.node(MAC) is None
    full.lease()
    code, token = full.script(NODE)
    assert code == 200 and token is not None
    node = full.registry.node(MAC)
    assert node is not None and node.ip == NODE  # the lease's address


def test_a_token_is_bound_to_the_lease_good_for_one_report_and_keys_in_its_life(
    full: Site,
) -> None:
    full.lease()
    _, token = full.script(NODE)
    assert token is not None
    assert full.report(OTHER, token) == 401  # stolen: bound to the node's address
    assert full.keys(NODE, token) == 200
    assert full.report(NODE, token) == 202
    assert full.report(NODE, token) == 401  # once
    assert full.keys(NODE, token) == 200  # keys: as long as it lives
    assert full.ip() == NODE  # full mode: the address is the lease's, never the report's
    full.clock.now += BOOT_TOKEN_SECONDS
    assert full.keys(NODE, token) == 401
    whys = [r["why"] for r in full.refused()]
    assert whys == [
        "boot token used from another address",
        "boot token already used for an inventory",
        "boot token expired",
    ]


def test_a_report_refused_as_malformed_does_not_spend_the_token(full: Site) -> None:
    full.lease()
    _, token = full.script(NODE)
    auth = {"Authorization": f"Bearer {token}"}
    bad = full.client(NODE).post(f"/api/v1/nodes/{MAC}/inventory", json=[1], headers=auth)
    assert bad.status_code == 422
    assert full.report(NODE, str(token)) == 202


def test_a_token_expires(full: Site) -> None:
    full.lease()
    _, token = full.script(NODE)
    assert token is not None
    full.clock.now += BOOT_TOKEN_SECONDS - 1
    assert full.keys(NODE, token) == 200
    full.clock.now += 1
    assert full.report(NODE, token) == 401
    assert full.refused()[-1]["why"] == "boot token expired"
    assert full.registry.inventory_document(MAC) is None


def test_refused_events_are_bounded_per_node(full: Site) -> None:
    full.lease()
    full.script(NODE)
    for _ in range(REFUSED_EVENTS_PER_MINUTE + 15):
        assert full.report(OTHER, "guess") == 401
    assert len(full.refused()) == REFUSED_EVENTS_PER_MINUTE
    dropped = full.ctx.metrics.value("provisioner_events_dropped_total", kind="refused")
    assert dropped == 15
    assert full.ctx.metrics.value("provisioner_http_refused_total", reason="boot-token") == 25


def test_a_script_on_a_nodes_behalf_is_taken_from_the_appliance_only(full: Site) -> None:
    behalf = {"X-Provisioner-On-Behalf": "lab"}
    assert full.script(OTHER, **behalf)[0] == 403
    assert full.registry.node(MAC) is None  # nothing made for it
    for appliance in (SERVER, "127.0.0.1"):
        code, token = full.script(appliance, **behalf)
        assert code == 200 and token is not None  # the lab's container: no DHCP yet
    assert token is not None and full.ip() is None
    assert full.keys("10.30.0.105", token) == 200  # bound to its first user: the container
    assert full.report(OTHER, token) == 401
    assert full.report("10.30.0.105", token) == 202


def test_file_fetches_name_only_known_nodes(full: Site) -> None:
    client = full.client(OTHER)
    assert client.get(f"/images/discovery@1/vmlinuz?mac={MAC}").status_code == 200
    assert full.registry.node(MAC) is None and full.registry.events(MAC) == []
    full.registry.touch_node(MAC)
    assert client.get(f"/images/discovery@1/vmlinuz?mac={MAC}").status_code == 200
    assert [e.kind for e in full.registry.events(MAC)] == [EventKind.HTTP_FILE]


def test_an_enrolled_nodes_new_host_keys_are_held_not_applied(full: Site) -> None:
    full.lease()
    _, token = full.script(NODE)
    assert full.report(NODE, str(token), KEY_A) == 202
    full.registry.set_profile(MAC, "qemu-lab")
    full.registry.transition(MAC, NodeEvent.MATCH)
    full.registry.transition(MAC, NodeEvent.ENROLL)
    _, token = full.script(NODE)
    r = full.client(NODE).post(
        f"/api/v1/nodes/{MAC}/inventory",
        json={
            "schema": SCHEMA,
            "memory_bytes": 8 << 30,
            "ssh_host_keys": [{"type": "ssh-ed25519", "fingerprint": KEY_B}],
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 202
    assert r.json() == {"mac": MAC, "state": "enrolled", "next": "stay", "approval": "pending"}
    inventory = full.registry.inventory(MAC)
    assert inventory is not None and [k.fingerprint for k in inventory.ssh_host_keys] == [KEY_A]
    held = full.registry.events(MAC)[-1]
    assert held.kind is EventKind.APPROVAL
    assert (held.detail["keys_before"], held.detail["keys_after"]) == (KEY_A, KEY_B)


# ------------------------------------------------------------- proxy mode


def test_proxy_a_second_asker_is_refused_while_a_token_lives(proxy: Site) -> None:
    code, token = proxy.script(NODE)
    assert code == 200 and token is not None
    assert proxy.script(OTHER) == (403, None)
    assert proxy.refused()[-1] == {
        "what": "boot script",
        "why": "a live boot token was given to another address",
        "client": OTHER,
    }
    assert proxy.script(NODE)[0] == 200  # the same asker: its next boot
    proxy.clock.now += BOOT_TOKEN_SECONDS
    code, theirs = proxy.script(OTHER)  # expired: the rule cannot hold a node forever
    assert code == 200 and theirs is not None
    assert proxy.script(NODE)[0] == 403


def test_proxy_the_address_its_dhcp_request_named_is_the_only_asker(proxy: Site) -> None:
    proxy.registry.touch_node(MAC, dhcp_ip=NODE)
    assert proxy.script(OTHER)[0] == 403
    assert proxy.script(NODE)[0] == 200


def test_proxy_the_report_gives_the_address_and_binds_the_token(proxy: Site) -> None:
    _, token = proxy.script(NODE)
    assert token is not None
    assert proxy.ip() is None  # a script fetch says nothing of the address
    assert proxy.keys("10.30.0.101", token) == 200  # the booted image's address (DHCP again)
    assert proxy.report(OTHER, token) == 401
    assert proxy.ip() is None
    assert proxy.report("10.30.0.101", token) == 202
    assert proxy.ip() == "10.30.0.101"


def test_proxy_an_enrolled_nodes_new_address_waits_for_approval(proxy: Site) -> None:
    _, token = proxy.script(NODE)
    assert proxy.report(NODE, str(token)) == 202
    proxy.registry.set_profile(MAC, "qemu-lab")
    proxy.registry.transition(MAC, NodeEvent.MATCH)
    proxy.registry.transition(MAC, NodeEvent.ENROLL)
    proxy.clock.now += BOOT_TOKEN_SECONDS
    _, token = proxy.script(OTHER)
    assert proxy.report(OTHER, str(token)) == 202
    assert proxy.ip() == NODE
    pending = proxy.registry.pending_inventory(MAC)
    assert pending is not None and pending.ip == OTHER
    assert pending.changes == {"what": "address", "ip_before": NODE, "ip_after": OTHER}
