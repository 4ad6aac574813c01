"""What to answer a DHCP/PXE client: pure decisions, no sockets, no clock.

``decide(packet, config, port=..., leases=..., now=...)`` returns a :class:`Decision`: the
reply to send (or None and a short reason), where to send it, and a lease change for the
caller to store. The adapter owns the sockets and the lease table.

Two modes (:class:`DhcpMode`):

* PROXY: another server hands out addresses; we only add boot information (PXE proxyDHCP,
  as pixiecore does). We never offer an address.
* FULL: we are the authoritative DHCP server of an isolated provisioning network.

Port 4011 is the PXE boot server port in both modes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType

from provisioner.boot.dhcp_codec import (
    BOOTREQUEST,
    BROADCAST_FLAG,
    ZERO_IP,
    DhcpPacket,
    MessageType,
    Option,
    OptionCode,
    option_ip,
    option_text,
    option_u32,
    reply_to,
)
from provisioner.boot.leases import LeaseTable
from provisioner.errors import ConfigError

PXE_SERVER_PORT = 4011
DEFAULT_LEASE_SECONDS = 3600
OFFER_HOLD_SECONDS = 60
DEFAULT_BIOS_FILE = "undionly.kpxe"
DEFAULT_EFI_X64_FILE = "ipxe.efi"
DEFAULT_EFI_ARM64_FILE = "arm64/ipxe.efi"
# PXE vendor options (43): PXE_DISCOVERY_CONTROL (6) = 0x08, "boot the file in this offer".
PXE_VENDOR_OPTIONS = bytes((6, 1, 0x08, 0xFF))
# iPXE's encapsulated option 175, sub-option 176 "no-pxedhcp" = 1 (iPXE include/ipxe/dhcp.h,
# DHCP_EB_NO_PXEDHCP): skip the wait for ProxyDHCP offers.
IPXE_NO_PXEDHCP = bytes((176, 1, 1))
_FILE_FIELD_MAX = 127


class DhcpMode(Enum):
    PROXY = "proxy"
    FULL = "full"


class Firmware(Enum):
    BIOS = "bios"
    UEFI = "uefi"
    UEFI_HTTP = "uefi-http"
    ARM64 = "arm64"


# RFC 4578 / IANA processor architecture types -> firmware we can boot. 6 is IA32 UEFI and
# 10 is ARM 32-bit UEFI: both are served the 64-bit binaries, as configured.
ARCH_FIRMWARE: Mapping[int, Firmware] = MappingProxyType(
    {
        0: Firmware.BIOS,
        6: Firmware.UEFI,
        7: Firmware.UEFI,
        9: Firmware.UEFI,
        10: Firmware.ARM64,
        11: Firmware.ARM64,
        16: Firmware.UEFI_HTTP,
        19: Firmware.ARM64,
    }
)
HTTP_BOOT_ARCHES = frozenset({16, 19})


class BootVia(Enum):
    TFTP = "tftp"
    HTTP = "http"


class Destination(Enum):
    """Where the adapter sends a reply."""

    RELAY = "relay"  # giaddr, port 67
    SOURCE = "source"  # the request's source address and port (port 4011)
    CLIENT = "client"  # ciaddr, port 68
    BROADCAST = "broadcast"  # 255.255.255.255, port 68


@dataclass(frozen=True)
class PolicyConfig:
    mode: DhcpMode
    server_ip: IPv4Address
    http_port: int
    subnet: IPv4Network
    pool_start: IPv4Address | None = None
    pool_end: IPv4Address | None = None
    router: IPv4Address | None = None
    dns_servers: tuple[IPv4Address, ...] = ()
    domain: str | None = None
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    reservations: Mapping[str, IPv4Address] = field(default_factory=lambda: MappingProxyType({}))
    bios_file: str = DEFAULT_BIOS_FILE
    efi_x64_file: str = DEFAULT_EFI_X64_FILE
    efi_arm64_file: str = DEFAULT_EFI_ARM64_FILE
    pxe_port: int = PXE_SERVER_PORT  # the port decide() treats as the PXE boot server
    # Worked out once (per packet, they were a tenth of decide()'s time in a storm): the
    # addresses never handed out, and every reserved address.
    taboo: frozenset[IPv4Address] = field(init=False, repr=False, compare=False)
    _reserved: frozenset[IPv4Address] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lowered = {mac.lower(): ip for mac, ip in self.reservations.items()}
        object.__setattr__(self, "reservations", MappingProxyType(lowered))
        taboo = {self.server_ip, self.subnet.network_address, self.subnet.broadcast_address}
        if self.router is not None:
            taboo.add(self.router)
        object.__setattr__(self, "taboo", frozenset(taboo))
        object.__setattr__(self, "_reserved", frozenset(lowered.values()))
        if (self.pool_start is None) != (self.pool_end is None):
            raise ConfigError("pool_end", self.pool_end, "pool_start and pool_end go together")
        if self.pool_start is not None and self.pool_end is not None:
            for key, ip in (("pool_start", self.pool_start), ("pool_end", self.pool_end)):
                if ip not in self.subnet:
                    raise ConfigError(key, str(ip), f"not in subnet {self.subnet}")
            if self.pool_start > self.pool_end:
                raise ConfigError("pool_start", str(self.pool_start), "after pool_end")
        for mac, ip in lowered.items():
            if ip not in self.subnet:
                raise ConfigError(f"reservations.{mac}", str(ip), f"not in {self.subnet}")
        if self.lease_seconds <= 0:
            raise ConfigError("lease_seconds", self.lease_seconds, "must be positive")

    def reserved_for_others(self, mac: str) -> frozenset[IPv4Address]:
        own = self.reservations.get(mac)
        if own is None:
            return self._reserved
        return frozenset(ip for owner, ip in self.reservations.items() if owner != mac)

    def in_pool(self, ip: IPv4Address) -> bool:
        if self.pool_start is None or self.pool_end is None:
            return False
        return self.pool_start <= ip <= self.pool_end


@dataclass(frozen=True)
class ClientInfo:
    firmware: Firmware
    arch: int | None
    is_ipxe: bool
    is_pxe: bool
    is_http_client: bool


@dataclass(frozen=True)
class BootTarget:
    url_or_file: str
    via: BootVia
    vendor_class: str  # option 60 to put in replies: "PXEClient" or "HTTPClient"


class LeaseActionKind(Enum):
    COMMIT = "commit"  # store ip as leased to mac until expires_at
    RELEASE = "release"  # drop every lease and offer held by mac
    # The client took another server's offer: drop ours. That server may be a peer
    # sharing our registry (issue 23), whose lease the registry row now is.
    WITHDRAW = "withdraw"
    DECLINE = "decline"  # mac found ip in use: mark the address unusable


@dataclass(frozen=True)
class LeaseAction:
    """A change for the caller's lease table; ``ip`` is None only for RELEASE, WITHDRAW and
    ``expires_at`` (same clock as ``now``) is set only for COMMIT."""

    kind: LeaseActionKind
    mac: str
    ip: IPv4Address | None = None
    expires_at: float | None = None

    @classmethod
    def commit(cls, mac: str, ip: IPv4Address, expires_at: float) -> LeaseAction:
        return cls(LeaseActionKind.COMMIT, mac, ip, expires_at)

    @classmethod
    def release(cls, mac: str) -> LeaseAction:
        return cls(LeaseActionKind.RELEASE, mac)

    @classmethod
    def withdraw(cls, mac: str) -> LeaseAction:
        return cls(LeaseActionKind.WITHDRAW, mac)

    @classmethod
    def decline(cls, ip: IPv4Address, mac: str) -> LeaseAction:
        return cls(LeaseActionKind.DECLINE, mac, ip)


@dataclass(frozen=True)
class Decision:
    reply: DhcpPacket | None
    destination: Destination | None  # None exactly when reply is None
    lease: LeaseAction | None
    client: ClientInfo | None
    reason: str


def _flags(pkt: DhcpPacket) -> tuple[int | None, bool, bool, bool]:
    """(arch, is_ipxe, is_pxe, is_http); arch from option 93, else "PXEClient:Arch:00007:..."."""
    vendor = pkt.vendor_class or ""
    parts = vendor.split(":", 3)
    arch: int | None = None
    if pkt.client_architectures:
        arch = pkt.client_architectures[0]
    elif len(parts) >= 3 and parts[1] == "Arch" and parts[2].isascii() and parts[2].isdigit():
        arch = int(parts[2][:5])
    is_ipxe = "iPXE" in pkt.user_classes
    is_pxe = vendor.startswith("PXEClient") or pkt.option(OptionCode.CLIENT_ARCH) is not None
    is_http = vendor.startswith("HTTPClient") or arch in HTTP_BOOT_ARCHES
    return arch, is_ipxe, is_pxe, is_http


def classify(pkt: DhcpPacket) -> ClientInfo | None:
    """Which boot firmware sent ``pkt``; None for non-booting clients and unknown arches."""
    arch, is_ipxe, is_pxe, is_http = _flags(pkt)
    if not (is_ipxe or is_pxe or is_http):
        return None
    if arch is None:
        firmware = Firmware.UEFI_HTTP if is_http else Firmware.BIOS
    elif arch in ARCH_FIRMWARE:
        firmware = ARCH_FIRMWARE[arch]
    else:
        return None
    return ClientInfo(firmware, arch, is_ipxe, is_pxe, is_http)


def boot_target(info: ClientInfo, cfg: PolicyConfig, mac: str) -> BootTarget:
    """What ``info`` boots next. iPXE gets its per-MAC script, ending the chainload loop."""
    base = f"http://{cfg.server_ip}:{cfg.http_port}"
    vendor = "HTTPClient" if info.is_http_client else "PXEClient"
    if info.is_ipxe:
        return BootTarget(f"{base}/boot/{mac}.ipxe", BootVia.HTTP, vendor)
    if info.firmware is Firmware.BIOS and not info.is_http_client:
        return BootTarget(cfg.bios_file, BootVia.TFTP, vendor)
    efi = cfg.efi_arm64_file if info.firmware is Firmware.ARM64 else cfg.efi_x64_file
    if info.is_http_client:
        return BootTarget(f"{base}/tftp/{efi}", BootVia.HTTP, vendor)
    return BootTarget(efi, BootVia.TFTP, vendor)


def choose_address(
    mac: str,
    requested: IPv4Address | None,
    cfg: PolicyConfig,
    leases: LeaseTable,
) -> IPv4Address | None:
    """The address ``mac`` should have: reservation, current lease, requested, lowest free."""
    mac = mac.lower()
    taboo = cfg.taboo
    reserved = cfg.reservations.get(mac)
    if reserved is not None and reserved not in taboo and leases.owner(reserved) in (None, mac):
        return reserved
    others = taboo | cfg.reserved_for_others(mac)
    held = leases.held_by(mac)
    if held is not None and cfg.in_pool(held) and held not in others:
        return held
    if (
        requested is not None
        and cfg.in_pool(requested)
        and requested not in others
        and leases.owner(requested) is None
    ):
        return requested
    if cfg.pool_start is None or cfg.pool_end is None:
        return None
    return leases.lowest_free(cfg.pool_start, cfg.pool_end, others)


def _ignore(
    reason: str, client: ClientInfo | None = None, lease: LeaseAction | None = None
) -> Decision:
    return Decision(None, None, lease, client, reason)


def _destination(pkt: DhcpPacket, boot_server: bool, message_type: MessageType) -> Destination:
    if pkt.giaddr != ZERO_IP:
        return Destination.RELAY
    if boot_server:
        return Destination.SOURCE
    if message_type is not MessageType.NAK and pkt.ciaddr != ZERO_IP:
        return Destination.CLIENT
    return Destination.BROADCAST


def _fit_file(name: str) -> str:
    return name if len(name.encode("utf-8")) <= _FILE_FIELD_MAX else ""


def _boot_parts(
    pkt: DhcpPacket, info: ClientInfo, cfg: PolicyConfig, mac: str, *, proxy: bool
) -> tuple[str, list[Option]]:
    """The file field and boot options for ``info``. Proxy replies always carry 60."""
    target = boot_target(info, cfg, mac)
    opts: list[Option] = []
    if proxy or info.is_http_client:
        opts.append(option_text(OptionCode.VENDOR_CLASS, target.vendor_class))
    if proxy:
        guid = pkt.option(OptionCode.CLIENT_MACHINE_ID)
        if guid is not None:
            opts.append((OptionCode.CLIENT_MACHINE_ID, guid))
        if not (info.is_ipxe or info.is_http_client):
            opts.append((OptionCode.VENDOR_SPECIFIC, PXE_VENDOR_OPTIONS))
    opts.append(option_text(OptionCode.TFTP_SERVER_NAME, str(cfg.server_ip)))
    opts.append(option_text(OptionCode.BOOTFILE_NAME, target.url_or_file))
    return target.url_or_file, opts


def _not_booting(pkt: DhcpPacket) -> str:
    _, is_ipxe, is_pxe, is_http = _flags(pkt)
    return "unsupported-arch" if (is_ipxe or is_pxe or is_http) else "not-pxe"


def _decide_boot_only(
    pkt: DhcpPacket,
    cfg: PolicyConfig,
    mac: str,
    mt: MessageType,
    info: ClientInfo | None,
    *,
    boot_server: bool,
) -> Decision:
    """proxyDHCP (port 67, proxy mode) or PXE boot server (4011): boot information only."""
    if boot_server:
        if mt not in (MessageType.REQUEST, MessageType.INFORM):
            return _ignore("unsupported-message", info)
        reply_type = MessageType.ACK
    else:
        if mt is MessageType.REQUEST and pkt.server_identifier != cfg.server_ip:
            return _ignore("not-for-us", info)
        if mt not in (MessageType.DISCOVER, MessageType.REQUEST):
            return _ignore("not-for-us", info)
        reply_type = MessageType.OFFER if mt is MessageType.DISCOVER else MessageType.ACK
    if info is None:
        return _ignore(_not_booting(pkt))
    file, boot_opts = _boot_parts(pkt, info, cfg, mac, proxy=True)
    reply = reply_to(
        pkt,
        message_type=reply_type,
        siaddr=cfg.server_ip,
        sname=str(cfg.server_ip),
        file=_fit_file(file),
        options=[option_ip(OptionCode.SERVER_ID, cfg.server_ip), *boot_opts],
    )
    reason = "offer" if reply_type is MessageType.OFFER else "ack"
    return Decision(reply, _destination(pkt, boot_server, reply_type), None, info, reason)


def _full_reply(
    pkt: DhcpPacket,
    cfg: PolicyConfig,
    mac: str,
    info: ClientInfo | None,
    message_type: MessageType,
    yiaddr: IPv4Address,
    *,
    network: bool,
) -> DhcpPacket:
    opts: list[Option] = [option_ip(OptionCode.SERVER_ID, cfg.server_ip)]
    if network:
        opts.append(option_ip(OptionCode.SUBNET_MASK, cfg.subnet.netmask))
        if cfg.router is not None:
            opts.append(option_ip(OptionCode.ROUTER, cfg.router))
        if cfg.dns_servers:
            opts.append(option_ip(OptionCode.DNS_SERVERS, *cfg.dns_servers))
        if cfg.domain:
            opts.append(option_text(OptionCode.DOMAIN_NAME, cfg.domain))
        opts.append(option_u32(OptionCode.LEASE_TIME, cfg.lease_seconds))
    file, siaddr, sname = "", ZERO_IP, ""
    if info is not None:
        file, boot_opts = _boot_parts(pkt, info, cfg, mac, proxy=False)
        file, siaddr, sname = _fit_file(file), cfg.server_ip, str(cfg.server_ip)
        opts.extend(boot_opts)
        if info.is_ipxe:
            # We are the only DHCP server here: iPXE need not wait ~2 s for ProxyDHCP.
            opts.append((OptionCode.IPXE_ENCAPSULATED, IPXE_NO_PXEDHCP))
    return reply_to(
        pkt,
        message_type=message_type,
        yiaddr=yiaddr,
        siaddr=siaddr,
        file=file,
        sname=sname,
        options=opts,
    )


def _nak(pkt: DhcpPacket, cfg: PolicyConfig, info: ClientInfo | None, why: str) -> Decision:
    reply = reply_to(
        pkt,
        message_type=MessageType.NAK,
        options=[
            option_ip(OptionCode.SERVER_ID, cfg.server_ip),
            option_text(OptionCode.MESSAGE, why),
        ],
    )
    if pkt.giaddr != ZERO_IP:  # RFC 2131 4.3.2: the relay must broadcast the NAK
        reply = replace(reply, flags=reply.flags | BROADCAST_FLAG)
    return Decision(reply, _destination(pkt, False, MessageType.NAK), None, info, f"nak-{why}")


def _decide_full(
    pkt: DhcpPacket,
    cfg: PolicyConfig,
    mac: str,
    mt: MessageType,
    info: ClientInfo | None,
    leases: LeaseTable,
    now: float,
) -> Decision:
    server_id = pkt.server_identifier
    if server_id is not None and server_id != cfg.server_ip:
        if mt is MessageType.REQUEST and leases.held_by(mac) is not None:
            return _ignore("not-for-us", info, LeaseAction.withdraw(mac))
        return _ignore("not-for-us", info)
    if pkt.giaddr != ZERO_IP and pkt.giaddr not in cfg.subnet:
        return _ignore("relay-outside-subnet", info)
    if mt is MessageType.DISCOVER:
        ip = choose_address(mac, pkt.requested_address, cfg, leases)
        if ip is None:
            return _ignore("no-free-address", info)
        reply = _full_reply(pkt, cfg, mac, info, MessageType.OFFER, ip, network=True)
        hold = (
            None
            if leases.owner(ip) == mac
            else LeaseAction.commit(mac, ip, now + OFFER_HOLD_SECONDS)
        )
        return Decision(reply, _destination(pkt, False, MessageType.OFFER), hold, info, "offer")
    if mt is MessageType.REQUEST:
        wanted = pkt.requested_address or pkt.ciaddr
        if wanted == ZERO_IP:
            return _ignore("no-requested-address", info)
        if wanted not in cfg.subnet:
            return _nak(pkt, cfg, info, "wrong-subnet")
        if choose_address(mac, wanted, cfg, leases) != wanted:
            return _nak(pkt, cfg, info, "wrong-address")
        reply = _full_reply(pkt, cfg, mac, info, MessageType.ACK, wanted, network=True)
        commit = LeaseAction.commit(mac, wanted, now + cfg.lease_seconds)
        return Decision(reply, _destination(pkt, False, MessageType.ACK), commit, info, "ack")
    if mt is MessageType.RELEASE:
        return _ignore("release", info, LeaseAction.release(mac))
    if mt is MessageType.DECLINE:
        declined = pkt.requested_address
        if declined is None:
            return _ignore("decline-without-address", info)
        if leases.owner(declined) != mac:  # only its holder may give an address up (Kea)
            return _ignore("decline-not-held", info)
        return _ignore("decline", info, LeaseAction.decline(declined, mac))
    if mt is MessageType.INFORM:
        if info is None:
            return _ignore(_not_booting(pkt))
        if pkt.ciaddr == ZERO_IP and pkt.giaddr == ZERO_IP:
            return _ignore("inform-without-ciaddr", info)
        reply = _full_reply(pkt, cfg, mac, info, MessageType.ACK, ZERO_IP, network=False)
        return Decision(reply, _destination(pkt, False, MessageType.ACK), None, info, "inform")
    return _ignore("unsupported-message", info)


def with_lease_time(reply: DhcpPacket, seconds: int) -> DhcpPacket:
    """``reply`` with its lease time (option 51) set to ``seconds``: a renewal ACKed while
    the registry cannot record it is told only the time the registry already holds."""
    if seconds <= 0:
        raise ValueError(f"lease time must be positive, got {seconds}")
    lease = option_u32(OptionCode.LEASE_TIME, seconds)
    options = tuple(
        lease if code == OptionCode.LEASE_TIME else (code, v) for code, v in reply.options
    )
    if lease not in options:
        options = (*options, lease)
    return replace(reply, options=options)


def decide(
    pkt: DhcpPacket,
    cfg: PolicyConfig,
    *,
    port: int,
    leases: LeaseTable | Mapping[IPv4Address, str],
    now: float,
) -> Decision:
    """Answer ``pkt``, received on UDP ``port`` (``cfg.pxe_port`` = boot server, else DHCP).

    ``leases`` holds every unexpired leased or offered address with its MAC (lowercase,
    colon-separated, as ``DhcpPacket.mac``): a :class:`LeaseTable`, or a plain mapping
    (copied into one: fine for tests, O(n)); ``now`` is the clock ``expires_at`` uses.
    """
    if pkt.op != BOOTREQUEST:
        return _ignore("not-a-request")
    if pkt.option(OptionCode.MESSAGE_TYPE) is None:
        return _ignore("no-message-type")
    mt = pkt.message_type
    if mt is None:
        return _ignore("unsupported-message")
    mac = pkt.mac
    if mac is None:
        return _ignore("no-hardware-address")
    info = classify(pkt)
    if port == cfg.pxe_port or cfg.mode is DhcpMode.PROXY:
        return _decide_boot_only(pkt, cfg, mac, mt, info, boot_server=port == cfg.pxe_port)
    table = leases if isinstance(leases, LeaseTable) else LeaseTable.from_mapping(leases)
    return _decide_full(pkt, cfg, mac, mt, info, table, now)
