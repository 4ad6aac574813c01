"""The DHCP adapter's bookkeeping, fed datagrams directly (no socket): lease table and
registry stay in step, and the replies go where the policy says."""

from __future__ import annotations

import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from provisioner.boot.dhcp_codec import decode
from provisioner.boot.dhcp_server import HELD_MAX, DhcpService
from provisioner.config import Mode, parse_config, render_config
from provisioner.metrics import Metrics
from provisioner.records import LeaseKind
from provisioner.registry import Registry

PXE = [("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\x00\x00")]


def packet(mac: str, kind: str, *extra: tuple[str, object]) -> bytes:
    chaddr = bytes.fromhex(mac.replace(":", "")) + b"\0" * 10
    options = [("message-type", kind), *PXE, *extra, "end"]
    return bytes(BOOTP(op=1, chaddr=chaddr, xid=7, flags=0x8000) / DHCP(options=options))


def full_mode(state: Path, dhcp_range: str = "10.60.0.10-10.60.0.20") -> DhcpService:
    cfg = parse_config(
        render_config(
            interface="eth0",
            address="10.60.0.1/24",
            mode=Mode.FULL,
            dhcp_range=dhcp_range,
            state_dir=state,
        )
    )
    return DhcpService(cfg, Registry(cfg.registry_path), Metrics())


@pytest.fixture
def service(tmp_path: Path) -> DhcpService:
    return full_mode(tmp_path)


def offer(service: DhcpService, mac: str) -> IPv4Address:
    result = service.handle(packet(mac, "discover"), ("0.0.0.0", 68), 67)
    assert result is not None
    data, dest = result
    assert dest == ("255.255.255.255", 68)
    return decode(data).yiaddr


def test_simultaneous_discovers_get_different_addresses(service: DhcpService) -> None:
    a = offer(service, "02:00:00:00:00:01")
    b = offer(service, "02:00:00:00:00:02")
    assert (a, b) == (IPv4Address("10.60.0.10"), IPv4Address("10.60.0.11"))
    assert offer(service, "02:00:00:00:00:01") == a  # a repeat keeps its offer


def test_ack_is_remembered_by_a_new_service(service: DhcpService, tmp_path: Path) -> None:
    mac = "02:00:00:00:00:05"
    ip = offer(service, mac)
    req = packet(mac, "request", ("requested_addr", str(ip)), ("server_id", "10.60.0.1"))
    result = service.handle(req, ("0.0.0.0", 68), 67)
    assert result is not None and decode(result[0]).message_type is not None
    service.flush()
    again = DhcpService(service.cfg, Registry(service.cfg.registry_path), Metrics())
    assert again.leases.held_by(mac) == ip
    assert offer(again, "02:00:00:00:00:06") != ip
    node = again.registry.node(mac)
    assert node is not None and node.ip == str(ip) and node.firmware == "bios"


def test_release_and_decline_free_and_block(service: DhcpService) -> None:
    mac = "02:00:00:00:00:07"
    ip = offer(service, mac)
    assert service.handle(packet(mac, "release"), ("10.60.0.10", 68), 67) is None
    assert service.leases.held_by(mac) is None
    ip = offer(service, mac)
    decline = packet(mac, "decline", ("requested_addr", str(ip)))
    assert service.handle(decline, ("0.0.0.0", 68), 67) is None
    assert offer(service, "02:00:00:00:00:08") != ip
    assert service.metrics.total("provisioner_dhcp_dropped_total") == 0
    stray = packet("02:00:00:00:00:09", "decline", ("requested_addr", str(ip)))
    assert service.handle(stray, ("0.0.0.0", 68), 67) is None
    assert service.metrics.value("provisioner_dhcp_dropped_total", reason="decline-not-held") == 1


def test_garbage_is_counted_not_raised(service: DhcpService) -> None:
    assert service.handle(b"\x01\x02", ("10.0.0.9", 68), 67) is None
    assert service.metrics.value("provisioner_dhcp_dropped_total", reason="malformed") == 1
    assert offer(service, "02:00:00:00:00:09") == IPv4Address("10.60.0.10")


def test_a_reply_longer_than_the_requests_max_size_is_dropped_whole(
    service: DhcpService,
) -> None:
    """Found while writing bench/fuzz_bench.py's DHCP harness: a request whose option 82
    (echoed in every reply) is longer than its option 57 leaves room for. encode() raised
    ValueError, the socket callback logged a traceback per datagram (internal-error), and
    the lease the unsent reply offered stayed taken."""
    mac = "02:00:00:00:00:0b"
    small = ("max_dhcp_size", 576)
    relay_info = ("relay_agent_information", b"\x01\xfe" + bytes(253))  # 2 instances (RFC 3396)
    for kind in ("discover", "request"):
        asked = packet(mac, kind, small, relay_info, relay_info, ("requested_addr", "10.60.0.10"))
        assert service.handle(asked, ("0.0.0.0", 68), 67) is None
    assert service.metrics.value("provisioner_dhcp_dropped_total", reason="reply-too-large") == 2
    assert service.metrics.total("provisioner_dhcp_replies_total") == 0
    assert service.leases.held_by(mac) is None
    result = service.handle(packet(mac, "discover", small), ("0.0.0.0", 68), 67)
    assert result is not None and len(result[0]) <= 576 - 28
    assert decode(result[0]).yiaddr == IPv4Address("10.60.0.10")


# ------------------------------------------------------------- a node's address


@pytest.fixture
def proxy(tmp_path: Path) -> DhcpService:
    cfg = parse_config(
        render_config(
            interface="eth0",
            address="10.60.0.1/24",
            mode=Mode.PROXY,
            dhcp_range=None,
            state_dir=tmp_path,
        )
    )
    return DhcpService(cfg, Registry(cfg.registry_path), Metrics())


def test_full_mode_sets_the_address_from_the_ack_only(service: DhcpService) -> None:
    mac = "02:00:00:00:00:0a"
    ip = offer(service, mac)
    node = service.registry.node(mac)
    assert node is not None and node.ip is None  # offered is not bound
    asked = packet(mac, "discover", ("requested_addr", "10.60.0.66"))
    service.handle(asked, ("0.0.0.0", 68), 67)
    node = service.registry.node(mac)
    assert node is not None and node.ip is None
    req = packet(mac, "request", ("requested_addr", str(ip)), ("server_id", "10.60.0.1"))
    assert service.handle(req, ("0.0.0.0", 68), 67) is not None
    node = service.registry.node(mac)
    assert node is not None and node.ip == str(ip)
    assert service.registry.bound_address(mac) == str(ip)


def test_proxy_mode_never_takes_an_address_from_a_dhcp_packet(proxy: DhcpService) -> None:
    mac = "02:00:00:00:00:0b"
    spoofed = packet(mac, "discover", ("requested_addr", "10.60.0.66"))
    assert proxy.handle(spoofed, ("0.0.0.0", 68), 67) is not None  # the proxy offer
    node = proxy.registry.node(mac)
    assert node is not None and node.ip is None and proxy.registry.dhcp_address(mac) is None
    assert [e.detail["msg"] for e in proxy.registry.events(mac)][:1] == ["discover"]
    # A REQUEST to the site's server names the address it was offered: a hint for whom
    # the boot token goes to, never the node's address.
    to_site = packet(mac, "request", ("requested_addr", "10.60.0.120"), ("server_id", "10.60.0.2"))
    assert proxy.handle(to_site, ("0.0.0.0", 68), 67) is None
    node = proxy.registry.node(mac)
    assert node is not None and node.ip is None
    assert proxy.registry.dhcp_address(mac) == "10.60.0.120"
    assert proxy.registry.bound_address(mac) is None


# Group commit (issue 20, item 1): a reply that hands out a lease leaves only once the
# lease is in the registry.


class Scheduled:
    """Stands for the loop's timer of a scheduled flush (flush() cancels it)."""

    def cancel(self) -> None:
        pass


def request(service: DhcpService, mac: str) -> bytes:
    ip = offer(service, mac)
    service.flush()
    return packet(mac, "request", ("requested_addr", str(ip)), ("server_id", "10.60.0.1"))


def test_an_ack_leaves_only_after_its_lease_is_committed(service: DhcpService) -> None:
    mac = "02:00:00:00:00:21"
    req = request(service, mac)
    sent: list[tuple[bytes, bool]] = []

    def send(reply: bytes, dest: tuple[str, int]) -> None:
        fresh = Registry(service.cfg.registry_path)  # what a restarted serve would read
        sent.append(
            (
                reply,
                any(lease.mac == mac and lease.kind.value == "bound" for lease in fresh.leases()),
            )
        )
        fresh.close()

    service._flush_handle = Scheduled()  # type: ignore[assignment]  # as if a flush were scheduled
    service.receive(req, ("0.0.0.0", 68), 67, send)
    assert sent == []  # held: the batch is not committed yet
    service.flush()
    assert len(sent) == 1 and sent[0][1]  # sent, and the lease was already on disk
    assert decode(sent[0][0]).yiaddr == service.leases.held_by(mac)


def test_a_lease_that_cannot_be_written_is_not_handed_out(
    service: DhcpService, monkeypatch: pytest.MonkeyPatch
) -> None:
    mac = "02:00:00:00:00:22"
    req = request(service, mac)
    sent: list[bytes] = []
    service._flush_handle = Scheduled()  # type: ignore[assignment]

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(service.registry, "commit_lease", full_disk)
    service.receive(req, ("0.0.0.0", 68), 67, lambda reply, dest: sent.append(reply))
    service.flush()
    assert sent == []
    assert service.metrics.total("provisioner_dhcp_dropped_total") == 1  # not-recorded
    monkeypatch.undo()
    service._flush_handle = None
    service.receive(
        req, ("0.0.0.0", 68), 67, lambda reply, dest: sent.append(reply)
    )  # it asks again
    assert len(sent) == 1


def test_replies_that_change_no_lease_are_not_held(tmp_path: Path) -> None:
    cfg = parse_config(
        render_config(
            interface="eth0",
            address="10.61.0.1/24",
            mode=Mode.PROXY,
            dhcp_range=None,
            state_dir=tmp_path,
        )
    )
    proxy = DhcpService(cfg, Registry(cfg.registry_path), Metrics())
    proxy._flush_handle = Scheduled()  # type: ignore[assignment]  # a batch is open: no matter
    sent: list[bytes] = []
    proxy.receive(
        packet("02:00:00:00:00:23", "discover"), ("0.0.0.0", 68), 67, lambda r, d: sent.append(r)
    )
    assert len(sent) == 1  # proxy mode hands out no address: nothing to wait for


def test_an_address_another_serve_gave_first_is_not_handed_out(service: DhcpService) -> None:
    """A registry shared by two serves (issue 23): the lowest free address in this one's
    table was given by the other a moment ago. The OFFER is held back (the client asks
    again), counted, and the table learns the owner, so the next OFFER is another address."""
    other = Registry(service.cfg.registry_path)  # the other serve's connection
    assert other.commit_lease("02:00:00:00:00:99", IPv4Address("10.60.0.10"), time.time() + 600,
                              LeaseKind.BOUND)  # fmt: skip
    other.close()
    sent: list[bytes] = []
    service._flush_handle = Scheduled()  # type: ignore[assignment]  # as if a flush were scheduled
    mac = "02:00:00:00:00:31"
    service.receive(packet(mac, "discover"), ("0.0.0.0", 68), 67, lambda r, d: sent.append(r))
    service.flush()
    assert sent == []
    assert service.metrics.total("provisioner_dhcp_dropped_total") == 1  # lease-taken
    assert service.leases.owner(IPv4Address("10.60.0.10")) == "02:00:00:00:00:99"
    service._flush_handle = Scheduled()  # type: ignore[assignment]
    service.receive(packet(mac, "discover"), ("0.0.0.0", 68), 67, lambda r, d: sent.append(r))
    service.flush()
    assert [decode(r).yiaddr for r in sent] == [IPv4Address("10.60.0.11")]


# A full disk (issue 20, item 6): a renewal of a lease the registry holds is still ACKed,
# for the time the registry records; a new lease is refused; both are counted.


def lease_time(reply: bytes) -> int:
    value = decode(reply).option(51)
    assert value is not None
    return int.from_bytes(value, "big")


def test_on_a_full_disk_a_recorded_lease_is_renewed_for_its_recorded_time_only(
    service: DhcpService, monkeypatch: pytest.MonkeyPatch
) -> None:
    known, new = "02:00:00:00:00:31", "02:00:00:00:00:32"
    sent: list[bytes] = []
    service.receive(request(service, known), ("0.0.0.0", 68), 67, lambda r, d: sent.append(r))
    service.flush()
    assert lease_time(sent[-1]) == service.policy.lease_seconds
    (recorded,) = [lease for lease in service.registry.leases() if lease.mac == known]
    new_request = request(service, new)

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(service.registry, "commit_lease", full_disk)
    monkeypatch.setattr(service.registry, "add_event", full_disk)
    service._flush_handle = Scheduled()  # type: ignore[assignment]  # one batch for both
    renewal = packet(known, "request", ("requested_addr", str(recorded.ip)))
    sent.clear()
    service.receive(renewal, ("0.0.0.0", 68), 67, lambda r, d: sent.append(r))
    service.receive(new_request, ("0.0.0.0", 68), 67, lambda r, d: sent.append(r))
    service.flush()
    assert len(sent) == 1  # the renewal; the new lease is refused
    assert decode(sent[0]).yiaddr == recorded.ip
    assert 0 < lease_time(sent[0]) <= recorded.expires - time.time() + 1
    assert lease_time(sent[0]) < service.policy.lease_seconds
    counted = service.metrics.value
    assert counted("provisioner_dhcp_dropped_total", reason="not-recorded") == 1
    assert counted("provisioner_dhcp_unrecorded_renewals_total") == 1
    assert counted("provisioner_dhcp_registry_failures_total") == 1
    (still,) = [lease for lease in service.registry.leases() if lease.mac == known]
    assert still.expires == recorded.expires  # nothing written, nothing promised beyond it

    monkeypatch.undo()  # space again: the full time, recorded
    service._flush_handle = None
    service.receive(renewal, ("0.0.0.0", 68), 67, lambda r, d: sent.append(r))
    assert lease_time(sent[-1]) == service.policy.lease_seconds


def test_a_lease_unwritten_since_its_last_renewal_is_renewed_for_what_the_disk_holds(
    service: DhcpService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two renewals on a full disk: the second is told the registry's time, not the
    first's unrecorded one; and a lease with under a minute left is not renewed at all."""
    mac = "02:00:00:00:00:33"
    sent: list[bytes] = []
    service.receive(request(service, mac), ("0.0.0.0", 68), 67, lambda r, d: sent.append(r))
    (recorded,) = [lease for lease in service.registry.leases() if lease.mac == mac]

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(service.registry, "commit_lease", full_disk)
    renewal = packet(mac, "request", ("requested_addr", str(recorded.ip)))
    for _ in range(2):
        service._flush_handle = Scheduled()  # type: ignore[assignment]
        service.receive(renewal, ("0.0.0.0", 68), 67, lambda r, d: sent.append(r))
        service.flush()
        assert lease_time(sent[-1]) <= recorded.expires - time.time() + 1
    service._recorded[mac] = (recorded.ip, time.time() + 30)  # as if nearly run out
    before = len(sent)
    service._flush_handle = Scheduled()  # type: ignore[assignment]
    service.receive(renewal, ("0.0.0.0", 68), 67, lambda r, d: sent.append(r))
    service.flush()
    assert len(sent) == before


def test_a_full_batch_commits_at_once_and_its_replies_leave(tmp_path: Path) -> None:
    """At most HELD_MAX lease replies wait for one batch: a relay's socket is not sent a
    burst of hundreds at once, and a storm's batches stay small."""
    service = full_mode(tmp_path, "10.60.0.10-10.60.0.250")
    service._flush_handle = Scheduled()  # type: ignore[assignment]  # as if a flush were due
    sent: list[bytes] = []
    for i in range(HELD_MAX + 5):
        mac = f"02:00:00:00:01:{i:02x}"
        service.receive(packet(mac, "discover"), ("0.0.0.0", 68), 67, lambda r, d: sent.append(r))
        if i == HELD_MAX - 2:
            assert sent == []  # one short of a full batch: still held
        if i == HELD_MAX - 1:
            assert len(sent) == HELD_MAX  # the full batch was committed and sent at once
            service._flush_handle = Scheduled()  # type: ignore[assignment]  # the next batch
    assert len(sent) == HELD_MAX
    assert len(service.registry.leases()) == HELD_MAX
    service.flush()
    assert len(sent) == HELD_MAX + 5
