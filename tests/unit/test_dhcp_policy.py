"""The DHCP/PXE policy: requests built by scapy, replies read back by scapy."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from provisioner.boot.dhcp_codec import BROADCAST_FLAG, DhcpPacket, OptionCode, decode, encode
from provisioner.boot.dhcp_policy import (
    OFFER_HOLD_SECONDS,
    BootTarget,
    BootVia,
    ClientInfo,
    Decision,
    Destination,
    DhcpMode,
    Firmware,
    LeaseAction,
    LeaseActionKind,
    PolicyConfig,
    boot_target,
    choose_address,
    classify,
    decide,
    with_lease_time,
)
from provisioner.boot.leases import LeaseTable
from provisioner.errors import ConfigError, DhcpDecodeError

SERVER = IPv4Address("10.10.0.1")
MAC = "52:54:00:12:34:56"
CHADDR = bytes.fromhex("525400123456")
RESERVED_MAC = "52:54:00:00:00:99"
GUID = uuid.UUID("4c4c4544-0042-3510-8052-b7c04f333232")
NOW = 1_000_000.0
IP = IPv4Address

PROXY = PolicyConfig(
    mode=DhcpMode.PROXY, server_ip=SERVER, http_port=8080, subnet=IPv4Network("10.10.0.0/24")
)
FULL = replace(
    PROXY,
    mode=DhcpMode.FULL,
    pool_start=IP("10.10.0.100"),
    pool_end=IP("10.10.0.103"),
    router=IP("10.10.0.254"),
    dns_servers=(IP("10.10.0.1"), IP("10.10.0.2")),
    domain="lab.example",
    reservations={RESERVED_MAC.upper(): IP("10.10.0.50")},
)

# (name, options, firmware, arch, file, vendor class in proxy replies, option 43 sent)
BIOS = [("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\x00\x00")]
UEFI7 = [("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016"), (93, b"\x00\x07")]
UEFI9 = [("vendor_class_id", b"PXEClient:Arch:00009:UNDI:003016"), (93, b"\x00\x09")]
ARM64 = [("vendor_class_id", b"PXEClient:Arch:00011:UNDI:003016"), (93, b"\x00\x0b")]
HTTP16 = [("vendor_class_id", b"HTTPClient:Arch:00016:UNDI:003016"), (93, b"\x00\x10")]
HTTP19 = [("vendor_class_id", b"HTTPClient:Arch:00019:UNDI:003016"), (93, b"\x00\x13")]
IPXE = [*UEFI7, (77, b"iPXE"), (175, b"\xb1\x05\x01\x80\x86\x10\x0e")]
LEGACY = [("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001")]  # no option 93
IPXE_URL = f"http://10.10.0.1:8080/boot/{MAC}.ipxe"
CLIENTS = [
    ("bios", BIOS, Firmware.BIOS, 0, "undionly.kpxe", "PXEClient", True),
    ("legacy-bios", LEGACY, Firmware.BIOS, 0, "undionly.kpxe", "PXEClient", True),
    ("uefi7", UEFI7, Firmware.UEFI, 7, "ipxe.efi", "PXEClient", True),
    ("uefi9", UEFI9, Firmware.UEFI, 9, "ipxe.efi", "PXEClient", True),
    ("arm64", ARM64, Firmware.ARM64, 11, "arm64/ipxe.efi", "PXEClient", True),
    (
        "http16",
        HTTP16,
        Firmware.UEFI_HTTP,
        16,
        "http://10.10.0.1:8080/tftp/ipxe.efi",
        "HTTPClient",
        False,
    ),
    (
        "http19",
        HTTP19,
        Firmware.ARM64,
        19,
        "http://10.10.0.1:8080/tftp/arm64/ipxe.efi",
        "HTTPClient",
        False,
    ),
    ("ipxe", IPXE, Firmware.UEFI, 7, IPXE_URL, "PXEClient", False),
]


def request(
    message: str, options: list[Any] = BIOS, *, mac: bytes = CHADDR, **bootp: Any
) -> DhcpPacket:
    fields: dict[str, Any] = {"op": 1, "xid": 0xCAFE0001, "flags": 0x8000, "chaddr": mac}
    fields.update(bootp)
    return decode(
        bytes(BOOTP(**fields) / DHCP(options=[("message-type", message), *options, "end"]))
    )


def run(
    pkt: DhcpPacket,
    cfg: PolicyConfig = PROXY,
    *,
    port: int = 67,
    leases: dict[IPv4Address, str] | None = None,
) -> Decision:
    return decide(pkt, cfg, port=port, leases=leases or {}, now=NOW)


def wire(decision: Decision) -> tuple[Any, dict[Any, Any]]:
    """The reply as scapy reads it off the wire, and its options by name."""
    assert decision.reply is not None
    parsed = BOOTP(encode(decision.reply))
    options = {o[0]: o[1] for o in parsed[DHCP].options if isinstance(o, tuple)}
    return parsed, options


# ---------------------------------------------------------------- classification


@pytest.mark.parametrize(("name", "options", "firmware", "arch"), [c[:4] for c in CLIENTS])
def test_classify(name: str, options: list[Any], firmware: Firmware, arch: int) -> None:
    info = classify(request("discover", options))
    assert info is not None
    assert (info.firmware, info.arch) == (firmware, arch)
    assert info.is_ipxe == (name == "ipxe")
    assert info.is_http_client == name.startswith("http")


def test_classify_non_booting_and_unknown_arch() -> None:
    assert classify(request("discover", [("vendor_class_id", b"MSFT 5.0")])) is None
    assert classify(request("discover", [])) is None
    assert classify(request("discover", [(93, b"\x00\x02")])) is None  # EFI Itanium
    ipxe_only = classify(request("discover", [(77, b"iPXE")]))
    assert ipxe_only == ClientInfo(Firmware.BIOS, None, True, False, False)


@pytest.mark.parametrize(
    ("vendor", "arch"),
    [
        (b"PXEClient:Arch:00009", 9),
        (b"PXEClient:Arch:\xc2\xb2", None),  # a Unicode digit that int() refuses
        (b"PXEClient:Arch:" + b"9" * 5000, None),  # more digits than int() accepts
        (b"PXEClient:Arch:", None),
    ],
)
def test_arch_from_vendor_class_is_robust(vendor: bytes, arch: int | None) -> None:
    pkt = decode(
        bytes(
            BOOTP(op=1, chaddr=CHADDR)
            / DHCP(
                options=[
                    ("message-type", "discover"),
                    *[(60, vendor[i : i + 255]) for i in range(0, len(vendor), 255)],
                    "end",
                ]
            )
        )
    )
    info = classify(pkt)
    assert (info.arch if info else None) == arch
    decide(pkt, PROXY, port=67, leases={}, now=NOW)  # never raises


def test_classify_http_client_by_vendor_class_only() -> None:
    info = classify(request("discover", [("vendor_class_id", b"HTTPClient")]))
    assert info == ClientInfo(Firmware.UEFI_HTTP, None, False, False, True)


@pytest.mark.parametrize(
    ("info", "target"),
    [
        (
            ClientInfo(Firmware.BIOS, 0, False, True, False),
            BootTarget("undionly.kpxe", BootVia.TFTP, "PXEClient"),
        ),
        (
            ClientInfo(Firmware.UEFI, 7, False, True, False),
            BootTarget("snponly.efi", BootVia.TFTP, "PXEClient"),
        ),
        (
            ClientInfo(Firmware.ARM64, 11, False, True, False),
            BootTarget("arm64/ipxe.efi", BootVia.TFTP, "PXEClient"),
        ),
        (
            ClientInfo(Firmware.UEFI_HTTP, 16, False, True, True),
            BootTarget("http://10.10.0.1:8080/tftp/snponly.efi", BootVia.HTTP, "HTTPClient"),
        ),
        (
            ClientInfo(Firmware.UEFI, 7, True, True, False),
            BootTarget(IPXE_URL, BootVia.HTTP, "PXEClient"),
        ),
    ],
)
def test_boot_target(info: ClientInfo, target: BootTarget) -> None:
    cfg = replace(PROXY, efi_x64_file="snponly.efi")
    assert boot_target(info, cfg, MAC) == target


# ---------------------------------------------------------------- proxy mode


@pytest.mark.parametrize(
    ("name", "options", "firmware", "arch", "file", "vendor", "pxe43"), CLIENTS
)
def test_proxy_offer_for_every_client_class(
    name: str,
    options: list[Any],
    firmware: Firmware,
    arch: int,
    file: str,
    vendor: str,
    pxe43: bool,
) -> None:
    decision = run(request("discover", [*options, (97, b"\x00" + GUID.bytes)]))
    assert (decision.reason, decision.destination) == ("offer", Destination.BROADCAST)
    assert decision.lease is None
    assert decision.client is not None and decision.client.firmware is firmware
    parsed, opts = wire(decision)
    assert parsed.op == 2 and parsed.xid == 0xCAFE0001
    assert parsed.yiaddr == "0.0.0.0"
    assert parsed.siaddr == "10.10.0.1"
    assert parsed.sname.rstrip(b"\0") == b"10.10.0.1"
    assert parsed.file.rstrip(b"\0") == file.encode()
    assert opts["message-type"] == 2
    assert opts["server_id"] == "10.10.0.1"
    assert opts["vendor_class_id"] == vendor.encode()
    assert opts["pxe_client_machine_identifier"] == b"\x00" + GUID.bytes
    assert opts["tftp_server_name"] == b"10.10.0.1"
    assert opts["boot-file-name"] == file.encode()
    assert ("vendor_specific" in opts) == pxe43
    if pxe43:
        assert opts["vendor_specific"] == b"\x06\x01\x08\xff"
    for never in ("lease_time", "subnet_mask", "router", "name_server"):
        assert never not in opts


def test_proxy_request_to_us_is_acked() -> None:
    decision = run(request("request", [*UEFI7, ("server_id", "10.10.0.1")]))
    assert decision.reason == "ack"
    parsed, opts = wire(decision)
    assert opts["message-type"] == 5
    assert parsed.yiaddr == "0.0.0.0"
    assert opts["boot-file-name"] == b"ipxe.efi"


@pytest.mark.parametrize(
    ("pkt", "reason"),
    [
        (request("request", [*UEFI7, ("server_id", "10.10.0.9")]), "not-for-us"),
        (request("request", UEFI7), "not-for-us"),
        (request("release", UEFI7), "not-for-us"),
        (request("discover", [("vendor_class_id", b"MSFT 5.0")]), "not-pxe"),
        (request("discover", [(93, b"\x00\x02")]), "unsupported-arch"),
        (request("offer", UEFI7), "not-for-us"),
        (request("discover", UEFI7, op=2), "not-a-request"),
        (request("discover", UEFI7, hlen=0), "no-hardware-address"),
        (
            decode(bytes(BOOTP(op=1, chaddr=CHADDR) / DHCP(options=[(60, b"PXEClient"), "end"]))),
            "no-message-type",
        ),
        (
            decode(bytes(BOOTP(op=1, chaddr=CHADDR) / DHCP(options=[(53, b"\x0d"), "end"]))),
            "unsupported-message",
        ),
    ],
)
def test_proxy_ignores(pkt: DhcpPacket, reason: str) -> None:
    decision = run(pkt)
    assert decision == Decision(None, None, None, decision.client, reason)


def test_proxy_relayed_discover_goes_back_to_the_relay() -> None:
    pkt = request("discover", [*BIOS, (82, b"\x01\x06port-7")], giaddr="10.20.0.1", flags=0)
    decision = run(pkt)
    assert decision.destination is Destination.RELAY
    parsed, opts = wire(decision)
    assert parsed.giaddr == "10.20.0.1"
    assert opts["relay_agent_information"] == b"\x01\x06port-7"


@pytest.mark.parametrize("cfg", [PROXY, FULL], ids=["proxy", "full"])
@pytest.mark.parametrize("message", ["request", "inform"])
def test_boot_server_port_4011(cfg: PolicyConfig, message: str) -> None:
    pkt = request(message, [*UEFI9, (97, b"\x00" + GUID.bytes)], ciaddr="10.10.0.77", flags=0)
    decision = run(pkt, cfg, port=4011)
    assert (decision.reason, decision.destination, decision.lease) == (
        "ack",
        Destination.SOURCE,
        None,
    )
    parsed, opts = wire(decision)
    assert opts["message-type"] == 5
    assert parsed.yiaddr == "0.0.0.0"
    assert parsed.ciaddr == "10.10.0.77"
    assert parsed.file.rstrip(b"\0") == b"ipxe.efi"
    assert opts["server_id"] == "10.10.0.1"
    assert opts["vendor_class_id"] == b"PXEClient"
    assert opts["pxe_client_machine_identifier"] == b"\x00" + GUID.bytes


def test_boot_server_ignores_discover_and_non_pxe() -> None:
    assert run(request("discover", UEFI7), port=4011).reason == "unsupported-message"
    assert run(request("request", []), port=4011).reason == "not-pxe"


def test_boot_server_port_is_configurable() -> None:
    cfg = replace(PROXY, pxe_port=14011)
    assert run(request("request", UEFI7), cfg, port=14011).destination is Destination.SOURCE
    assert run(request("request", UEFI7), cfg, port=4011).reason == "not-for-us"


# ---------------------------------------------------------------- full mode


def test_full_discover_offers_lowest_free_address_with_boot_file() -> None:
    leases = {IP("10.10.0.100"): "aa:aa:aa:aa:aa:aa"}
    decision = run(request("discover", UEFI7), FULL, leases=leases)
    assert decision.reason == "offer"
    assert decision.destination is Destination.BROADCAST
    assert decision.lease == LeaseAction(
        LeaseActionKind.COMMIT, MAC, IP("10.10.0.101"), NOW + OFFER_HOLD_SECONDS
    )
    parsed, opts = wire(decision)
    assert parsed.yiaddr == "10.10.0.101"
    assert parsed.siaddr == "10.10.0.1"
    assert parsed.file.rstrip(b"\0") == b"ipxe.efi"
    assert opts["subnet_mask"] == "255.255.255.0"
    assert opts["router"] == "10.10.0.254"
    assert opts["name_server"] == "10.10.0.1"  # scapy shows the first of the list
    assert decision.reply is not None
    assert decision.reply.option(6) == IP("10.10.0.1").packed + IP("10.10.0.2").packed
    assert opts["domain"] == b"lab.example"
    assert opts["lease_time"] == 3600
    assert opts["server_id"] == "10.10.0.1"
    assert opts["tftp_server_name"] == b"10.10.0.1"
    assert opts["boot-file-name"] == b"ipxe.efi"
    assert "vendor_class_id" not in opts  # only HTTP clients need 60 from a real server
    assert "vendor_specific" not in opts


def test_full_offer_to_http_client_echoes_httpclient() -> None:
    _, opts = wire(run(request("discover", HTTP16), FULL))
    assert opts["vendor_class_id"] == b"HTTPClient"
    assert opts["boot-file-name"] == b"http://10.10.0.1:8080/tftp/ipxe.efi"


def test_full_offer_to_non_booting_client_has_no_boot_file() -> None:
    decision = run(request("discover", [("vendor_class_id", b"MSFT 5.0")]), FULL)
    parsed, opts = wire(decision)
    assert decision.client is None
    assert parsed.yiaddr == "10.10.0.100"
    assert parsed.siaddr == "0.0.0.0"
    assert parsed.file.rstrip(b"\0") == b""
    assert "boot-file-name" not in opts


def test_full_offer_of_a_held_address_does_not_shorten_the_lease() -> None:
    decision = run(request("discover"), FULL, leases={IP("10.10.0.102"): MAC})
    assert decision.reply is not None and decision.reply.yiaddr == IP("10.10.0.102")
    assert decision.lease is None


def test_full_pool_exhausted() -> None:
    leases = {IP(f"10.10.0.{n}"): f"aa:aa:aa:aa:aa:{n:02x}" for n in range(100, 104)}
    decision = run(request("discover"), FULL, leases=leases)
    assert decision == Decision(None, None, None, decision.client, "no-free-address")


def test_full_reservation_is_offered_outside_the_pool() -> None:
    decision = run(request("discover", mac=bytes.fromhex("525400000099")), FULL)
    assert decision.reply is not None and decision.reply.yiaddr == IP("10.10.0.50")


_OTHER = "aa:aa:aa:aa:aa:aa"


@pytest.mark.parametrize(
    ("mac", "requested", "leases", "cfg_change", "expected"),
    [
        (RESERVED_MAC, None, {}, {}, "10.10.0.50"),
        (RESERVED_MAC, "10.10.0.101", {IP("10.10.0.102"): RESERVED_MAC}, {}, "10.10.0.50"),
        # the reserved address is still leased to someone else: fall back to the pool
        (RESERVED_MAC, None, {IP("10.10.0.50"): _OTHER}, {}, "10.10.0.100"),
        (MAC, "10.10.0.101", {IP("10.10.0.103"): MAC}, {}, "10.10.0.103"),
        (MAC, "10.10.0.102", {}, {}, "10.10.0.102"),
        (MAC, "10.10.0.102", {IP("10.10.0.102"): _OTHER}, {}, "10.10.0.100"),
        (MAC, "10.10.0.200", {}, {}, "10.10.0.100"),  # not in the pool
        (MAC, "10.10.0.101", {}, {"reservations": {_OTHER: IP("10.10.0.101")}}, "10.10.0.100"),
        (MAC, None, {}, {"reservations": {_OTHER: IP("10.10.0.100")}}, "10.10.0.101"),
        (MAC, None, {}, {"server_ip": IP("10.10.0.100")}, "10.10.0.101"),
        (MAC, None, {}, {"router": IP("10.10.0.100")}, "10.10.0.101"),
        # one address per MAC (the lease table's rule): four other clients fill the pool
        (
            MAC,
            None,
            {IP(f"10.10.0.{n}"): f"aa:aa:aa:aa:aa:{n:02x}" for n in range(100, 104)},
            {},
            None,
        ),
        (MAC, None, {}, {"pool_start": None, "pool_end": None}, None),
    ],
)
def test_choose_address(
    mac: str,
    requested: str | None,
    leases: dict[IPv4Address, str],
    cfg_change: dict[str, Any],
    expected: str | None,
) -> None:
    cfg = replace(FULL, **cfg_change)
    wanted = IP(requested) if requested else None
    chosen = choose_address(mac, wanted, cfg, LeaseTable.from_mapping(leases))
    assert chosen == (IP(expected) if expected else None)


def test_full_request_for_offered_address_is_acked() -> None:
    pkt = request(
        "request", [*UEFI7, ("requested_addr", "10.10.0.101"), ("server_id", "10.10.0.1")]
    )
    decision = run(pkt, FULL, leases={IP("10.10.0.101"): MAC})
    assert (decision.reason, decision.destination) == ("ack", Destination.BROADCAST)
    assert decision.lease == LeaseAction(LeaseActionKind.COMMIT, MAC, IP("10.10.0.101"), NOW + 3600)
    parsed, opts = wire(decision)
    assert opts["message-type"] == 5
    assert parsed.yiaddr == "10.10.0.101"
    assert opts["lease_time"] == 3600
    assert opts["boot-file-name"] == b"ipxe.efi"


def test_full_renewal_is_unicast_to_the_client() -> None:
    pkt = request("request", flags=0, ciaddr="10.10.0.101")
    decision = run(pkt, FULL, leases={IP("10.10.0.101"): MAC})
    assert (decision.reason, decision.destination) == ("ack", Destination.CLIENT)
    parsed, _ = wire(decision)
    assert (parsed.ciaddr, parsed.yiaddr) == ("10.10.0.101", "10.10.0.101")


def test_full_request_for_another_server_releases_our_offer() -> None:
    pkt = request("request", [("requested_addr", "192.168.1.5"), ("server_id", "10.10.0.9")])
    decision = run(pkt, FULL, leases={IP("10.10.0.100"): MAC})
    assert decision == Decision(
        None, None, LeaseAction.withdraw(MAC), decision.client, "not-for-us"
    )
    assert run(pkt, FULL).lease is None  # nothing offered to release


@pytest.mark.parametrize(
    ("requested", "leases", "reason"),
    [
        ("10.10.0.102", {IP("10.10.0.101"): MAC}, "nak-wrong-address"),
        ("10.10.0.101", {IP("10.10.0.101"): _OTHER}, "nak-wrong-address"),
        ("10.10.0.50", {}, "nak-wrong-address"),  # someone else's reservation
        ("192.168.1.5", {}, "nak-wrong-subnet"),
    ],
)
def test_full_nak(requested: str, leases: dict[IPv4Address, str], reason: str) -> None:
    decision = run(
        request("request", [("requested_addr", requested)], ciaddr="0.0.0.0"), FULL, leases=leases
    )
    assert (decision.reason, decision.destination, decision.lease) == (
        reason,
        Destination.BROADCAST,
        None,
    )
    parsed, opts = wire(decision)
    assert opts["message-type"] == 6
    assert opts["server_id"] == "10.10.0.1"
    assert parsed.yiaddr == "0.0.0.0"
    assert "lease_time" not in opts


def test_full_nak_to_a_renewing_client_is_broadcast() -> None:
    decision = run(request("request", flags=0, ciaddr="10.10.0.99"), FULL)
    assert (decision.reason, decision.destination) == ("nak-wrong-address", Destination.BROADCAST)


def test_full_relayed_request_and_nak() -> None:
    relay: dict[str, Any] = {"giaddr": "10.10.0.250", "flags": 0}
    options = [(82, b"\x01\x02ab"), ("requested_addr", "10.10.0.100")]
    ack = run(request("request", options, **relay), FULL, leases={IP("10.10.0.100"): MAC})
    assert (ack.reason, ack.destination) == ("ack", Destination.RELAY)
    parsed, opts = wire(ack)
    assert parsed.giaddr == "10.10.0.250"
    assert opts["relay_agent_information"] == b"\x01\x02ab"
    nak = run(request("request", options, **relay), FULL, leases={IP("10.10.0.100"): _OTHER})
    assert (nak.reason, nak.destination) == ("nak-wrong-address", Destination.RELAY)
    assert nak.reply is not None and nak.reply.flags & BROADCAST_FLAG


def test_full_ignores_relays_from_other_subnets() -> None:
    decision = run(request("discover", giaddr="10.99.0.1"), FULL)
    assert decision.reason == "relay-outside-subnet"


def test_full_release_decline_inform() -> None:
    release = run(request("release", [("server_id", "10.10.0.1")], ciaddr="10.10.0.100"), FULL)
    assert release == Decision(None, None, LeaseAction.release(MAC), release.client, "release")
    declines = request("decline", [("requested_addr", "10.10.0.100"), ("server_id", "10.10.0.1")])
    decline = run(declines, FULL, leases={IP("10.10.0.100"): MAC})
    assert decline.lease == LeaseAction(LeaseActionKind.DECLINE, MAC, IP("10.10.0.100"))
    assert decline.reply is None
    # only the address's holder may give it up: a stray DECLINE took a booting node's offer
    for held in ({IP("10.10.0.100"): "52:54:00:00:00:01"}, {}):
        other = run(declines, FULL, leases=held)
        assert (other.reason, other.lease, other.reply) == ("decline-not-held", None, None)
    assert run(request("decline"), FULL).reason == "decline-without-address"
    assert run(request("release", [("server_id", "10.10.0.9")]), FULL).reason == "not-for-us"

    inform = run(request("inform", ARM64, ciaddr="10.10.0.77", flags=0), FULL)
    assert (inform.reason, inform.destination, inform.lease) == ("inform", Destination.CLIENT, None)
    parsed, opts = wire(inform)
    assert parsed.yiaddr == "0.0.0.0"
    assert opts["boot-file-name"] == b"arm64/ipxe.efi"
    assert "lease_time" not in opts and "subnet_mask" not in opts
    assert run(request("inform", ARM64), FULL).reason == "inform-without-ciaddr"
    assert run(request("inform", [], ciaddr="10.10.0.77"), FULL).reason == "not-pxe"


def test_full_ipxe_second_round_gets_its_script() -> None:
    pkt = request("request", [*IPXE, ("requested_addr", "10.10.0.100"), ("server_id", "10.10.0.1")])
    decision = run(pkt, FULL, leases={IP("10.10.0.100"): MAC})
    parsed, opts = wire(decision)
    assert decision.client is not None and decision.client.is_ipxe
    assert parsed.file.rstrip(b"\0") == IPXE_URL.encode()
    assert opts["boot-file-name"] == IPXE_URL.encode()


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"pool_end": None}, "pool_end"),
        ({"pool_start": IP("10.11.0.1")}, "pool_start"),
        ({"pool_start": IP("10.10.0.104")}, "pool_start"),
        ({"reservations": {MAC: IP("10.11.0.5")}}, f"reservations.{MAC}"),
        ({"lease_seconds": 0}, "lease_seconds"),
    ],
)
def test_config_is_validated(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        replace(FULL, **change)
    assert info.value.key == key


def test_reservations_are_matched_case_insensitively() -> None:
    assert FULL.reservations == {RESERVED_MAC: IP("10.10.0.50")}


def test_decide_is_total_on_mangled_requests() -> None:
    rng = random.Random(11)
    seeds = [
        encode(request(message, options, giaddr=giaddr))
        for message in ("discover", "request", "inform", "decline", "release")
        for options in (BIOS, HTTP16, IPXE, [])
        for giaddr in ("0.0.0.0", "10.10.0.250")
    ]
    decided = 0
    for _ in range(4000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        try:
            pkt = decode(bytes(data))
        except DhcpDecodeError:
            continue
        for cfg in (PROXY, FULL):
            for port in (67, 4011):
                decision = decide(pkt, cfg, port=port, leases={IP("10.10.0.100"): MAC}, now=NOW)
                assert (decision.reply is None) == (decision.destination is None)
                if decision.reply is not None:
                    decode(encode(decision.reply))
                decided += 1
    assert decided > 1000


def test_full_mode_tells_ipxe_not_to_wait_for_proxydhcp() -> None:
    offer = run(request("discover", IPXE), FULL).reply
    assert offer is not None and offer.option(175) == bytes((176, 1, 1))
    firmware = run(request("discover", BIOS), FULL).reply
    assert firmware is not None and firmware.option(175) is None
    proxied = run(request("discover", IPXE), PROXY).reply
    assert proxied is not None and proxied.option(175) is None


def test_with_lease_time_changes_option_51_only() -> None:
    ack = run(request("request", BIOS, ciaddr="10.10.0.100"), FULL, leases={})
    assert ack.reply is not None and ack.reply.option(OptionCode.LEASE_TIME) is not None
    shorter = with_lease_time(ack.reply, 120)
    assert shorter.option(OptionCode.LEASE_TIME) == (120).to_bytes(4, "big")
    rest = [o for o in shorter.options if o[0] != OptionCode.LEASE_TIME]
    assert rest == [o for o in ack.reply.options if o[0] != OptionCode.LEASE_TIME]
    assert shorter.yiaddr == ack.reply.yiaddr and len(shorter.options) == len(ack.reply.options)
    with pytest.raises(ValueError):
        with_lease_time(ack.reply, 0)
