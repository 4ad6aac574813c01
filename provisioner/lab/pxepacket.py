"""The pure half of the lab's PXE client: DHCP requests as PXE firmware and iPXE build
them, and the replies read back (scapy packets in, plain dataclasses out; no I/O).

The I/O half, which sends and listens inside a lab namespace, is
:mod:`provisioner.lab.pxeclient`.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from scapy.layers.dhcp import BOOTP, DHCP, DHCPRevOptions
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from provisioner.lab.netns import LabError

DEFAULT_TIMEOUT = 10.0
DEFAULT_OFFER_WINDOW = 1.5  # seconds to keep listening for more offers after the first
RETRANSMIT_INTERVAL = 2.0
BOOT_SERVER_PORT = 4011
CLIENT_PORT = 68
SERVER_PORT = 67
UNSPECIFIED = IPv4Address("0.0.0.0")
NETNS_RUN_DIR = "/run/netns"
# What PXE ROMs ask for: netmask, router, DNS, hostname, domain, ..., vendor, PXE options.
_PXE_ROM_PARAMS = (1, 2, 3, 5, 6, 12, 13, 15, 17, 28, 43, 51, 54, 58, 59, 60, 66, 67, 97)
PARAM_REQUEST_LIST: tuple[int, ...] = _PXE_ROM_PARAMS + tuple(range(128, 136))
PXE_BOOT_MENU = 9  # option 43 sub-option: boot menu (type:2, len:1, text)
PXE_BOOT_ITEM = 71  # option 43 sub-option: boot item (type:2, layer:2)


class PxeClientError(LabError):
    """The PXE conversation failed: no offer, no ACK, a NAK or a bad reply."""


class MessageType(enum.IntEnum):
    """DHCP option 53 values."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


@dataclass(frozen=True)
class PxeIdentity:
    """Who the client says it is: MAC, GUID and the PXE options it sends."""

    mac: str
    arch: int | None = None
    vendor_class: str | None = None
    user_class: str | None = None
    guid: uuid.UUID = field(default=uuid.UUID(int=0))

    @classmethod
    def for_mac(
        cls,
        mac: str,
        *,
        arch: int | None = None,
        vendor_class: str | None = None,
        user_class: str | None = None,
        guid: uuid.UUID | None = None,
    ) -> PxeIdentity:
        """An identity for ``mac``; without a GUID, one derived from the MAC (stable)."""
        mac = mac.lower()
        guid = guid or uuid.uuid5(uuid.NAMESPACE_OID, mac)
        return cls(mac, arch, vendor_class, user_class, guid)

    def chaddr(self) -> bytes:
        return bytes.fromhex(self.mac.replace(":", "")).ljust(16, b"\x00")

    def pxe_options(self) -> list[tuple[int, bytes]]:
        """Options 55, 57, 60, 93, 94, 97 and 77 as (code, raw value)."""
        opts: list[tuple[int, bytes]] = [
            (55, bytes(PARAM_REQUEST_LIST)),
            (57, (1472).to_bytes(2, "big")),
        ]
        if self.vendor_class is not None:
            opts.append((60, self.vendor_class.encode()))
        if self.arch is not None:
            opts.append((93, self.arch.to_bytes(2, "big")))
        opts.append((94, bytes((1, 2, 1))))  # UNDI 2.1
        opts.append((97, b"\x00" + self.guid.bytes))
        if self.user_class is not None:
            opts.append((77, self.user_class.encode()))  # raw, as iPXE sends it
        return opts


@dataclass(frozen=True)
class Reply:
    """The fields of one BOOTP/DHCP reply that a PXE client cares about."""

    message_type: int | None
    xid: int
    src_ip: str
    yiaddr: IPv4Address
    siaddr: IPv4Address
    file: str
    sname: str
    server_id: IPv4Address | None = None
    subnet_mask: IPv4Address | None = None
    router: IPv4Address | None = None
    lease_time: int | None = None
    vendor_class: str | None = None  # option 60
    tftp_server: str | None = None  # option 66
    bootfile_name: str | None = None  # option 67
    vendor_specific: bytes | None = None  # option 43, raw

    @property
    def is_proxy(self) -> bool:
        """A proxyDHCP offer: no address, option 60 ``PXEClient``."""
        return self.yiaddr == UNSPECIFIED and (self.vendor_class or "").startswith("PXEClient")

    @property
    def boot_file(self) -> str | None:
        return self.file or self.bootfile_name or None

    @property
    def next_server(self) -> str | None:
        if self.siaddr != UNSPECIFIED:
            return str(self.siaddr)
        return self.tftp_server or None

    def to_json(self) -> dict[str, object]:
        """Every field (addresses as strings, option 43 as hex) plus ``is_proxy``."""
        out = {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}
        out["message_type"] = _type_name(self.message_type)
        out["is_proxy"] = self.is_proxy
        return out


@dataclass(frozen=True)
class Exchange:
    """The outcome of DISCOVER/OFFER(s)/REQUEST/ACK."""

    xid: int
    offer: Reply
    ack: Reply
    proxy: Reply | None
    offers: tuple[Reply, ...]
    boot_file: str | None
    next_server: str | None

    @property
    def address(self) -> IPv4Interface:
        """The leased address with the prefix from the subnet mask (/32 without one)."""
        mask = self.ack.subnet_mask or self.offer.subnet_mask
        return IPv4Interface(f"{self.ack.yiaddr}/{mask or 32}")

    def to_json(self) -> dict[str, object]:
        return {
            "xid": self.xid,
            "address": str(self.ack.yiaddr),
            "prefix": self.address.network.prefixlen,
            "server_id": text_or_none(self.ack.server_id),
            "subnet_mask": text_or_none(self.ack.subnet_mask),
            "router": text_or_none(self.ack.router),
            "lease_time": self.ack.lease_time,
            "boot_file": self.boot_file,
            "next_server": self.next_server,
            "offer": self.offer.to_json(),
            "ack": self.ack.to_json(),
            "proxy": self.proxy.to_json() if self.proxy else None,
            "offers_seen": len(self.offers),
        }


# -- pure: building and reading packets ----------------------------------------


def _type_name(value: int | None) -> str | None:
    if value is None:
        return None
    try:
        return MessageType(value).name.lower()
    except ValueError:
        return str(value)


def text_or_none(value: object | None) -> str | None:
    return None if value is None else str(value)


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    return str(value) if isinstance(value, IPv4Address) else value


def _bootp(ident: PxeIdentity, xid: int, *, ciaddr: str = "0.0.0.0", broadcast: bool) -> Any:
    flags = 0x8000 if broadcast else 0
    return BOOTP(op=1, xid=xid, flags=flags, ciaddr=ciaddr, chaddr=ident.chaddr())


def _dhcp(mtype: MessageType, options: Sequence[tuple[int, bytes]]) -> Any:
    return DHCP(options=[(53, bytes((mtype,))), *options, "end"])


def _broadcast_frame(ident: PxeIdentity, payload: Any) -> Any:
    return (
        Ether(src=ident.mac, dst="ff:ff:ff:ff:ff:ff")
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=CLIENT_PORT, dport=SERVER_PORT)
        / payload
    )


def build_discover(ident: PxeIdentity, xid: int, *, broadcast: bool = True) -> Any:
    """A broadcast DISCOVER frame carrying the PXE options."""
    payload = _bootp(ident, xid, broadcast=broadcast) / _dhcp(
        MessageType.DISCOVER, ident.pxe_options()
    )
    return _broadcast_frame(ident, payload)


def build_request(ident: PxeIdentity, xid: int, offer: Reply, *, broadcast: bool = True) -> Any:
    """A broadcast REQUEST selecting ``offer`` (options 50 and 54)."""
    if offer.server_id is None:
        raise PxeClientError(f"offer from {offer.src_ip} has no server identifier (option 54)")
    chosen = [(50, offer.yiaddr.packed), (54, offer.server_id.packed)]
    payload = _bootp(ident, xid, broadcast=broadcast) / _dhcp(
        MessageType.REQUEST, [*chosen, *ident.pxe_options()]
    )
    return _broadcast_frame(ident, payload)


def build_boot_server_request(
    ident: PxeIdentity, xid: int, client_ip: IPv4Address, boot_item: int | None
) -> bytes:
    """The BOOTP payload of a REQUEST to a PXE boot server (port 4011), ciaddr set."""
    opts = ident.pxe_options()
    if boot_item is not None:
        item = bytes((PXE_BOOT_ITEM, 4)) + boot_item.to_bytes(2, "big") + b"\x00\x00"
        opts.append((43, item + b"\xff"))
    packet = _bootp(ident, xid, ciaddr=str(client_ip), broadcast=False) / _dhcp(
        MessageType.REQUEST, opts
    )
    return bytes(packet)


def _options(dhcp: Any) -> dict[int, Any]:
    """Scapy's parsed DHCP options keyed by option code (first value of each)."""
    out: dict[int, Any] = {}
    for opt in dhcp.options:
        if not isinstance(opt, tuple) or len(opt) < 2:
            continue
        name, value = opt[0], opt[1]
        code = name if isinstance(name, int) else DHCPRevOptions.get(name, (None,))[0]
        if isinstance(code, int):
            out.setdefault(code, value)
    return out


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.rstrip(b"\x00").decode("utf-8", "replace")
    return str(value)


def _ip(value: object) -> IPv4Address | None:
    if value is None:
        return None
    try:
        return IPv4Address(value if isinstance(value, bytes) else str(value))
    except ValueError:
        return None


def parse_reply(packet: Any, *, src_ip: str | None = None) -> Reply | None:
    """Read a BOOTP reply (a scapy packet with a BOOTP layer); None when it is not one."""
    if BOOTP not in packet or packet[BOOTP].op != 2:
        return None
    bootp = packet[BOOTP]
    opts = _options(packet[DHCP]) if DHCP in packet else {}
    if src_ip is None:
        src_ip = packet[IP].src if IP in packet else ""
    raw43 = opts.get(43)
    lease = opts.get(51)
    mtype = opts.get(53)
    return Reply(
        message_type=int(mtype) if mtype is not None else None,
        xid=int(bootp.xid),
        src_ip=str(src_ip),
        yiaddr=IPv4Address(bootp.yiaddr),
        siaddr=IPv4Address(bootp.siaddr),
        file=_text(bootp.file) or "",
        sname=_text(bootp.sname) or "",
        server_id=_ip(opts.get(54)),
        subnet_mask=_ip(opts.get(1)),
        router=_ip(opts.get(3)),
        lease_time=int(lease) if lease is not None else None,
        vendor_class=_text(opts.get(60)),
        tftp_server=_text(opts.get(66)),
        bootfile_name=_text(opts.get(67)),
        vendor_specific=bytes(raw43) if raw43 is not None else None,
    )


def pxe_suboptions(raw: bytes) -> dict[int, bytes]:
    """Split option 43 (PXE vendor options) into its sub-options."""
    subs: dict[int, bytes] = {}
    i = 0
    while i < len(raw):
        code = raw[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(raw):
            break
        length = raw[i + 1]
        subs[code] = raw[i + 2 : i + 2 + length]
        i += 2 + length
    return subs


def first_menu_item(raw43: bytes | None) -> int | None:
    """The boot server type of the first PXE boot menu entry, if the proxy sent a menu."""
    if not raw43:
        return None
    menu = pxe_suboptions(raw43).get(PXE_BOOT_MENU, b"")
    return int.from_bytes(menu[:2], "big") if len(menu) >= 3 else None


def choose(offers: Sequence[Reply]) -> tuple[Reply, Reply | None]:
    """Pick the address offer (first one with a yiaddr) and the proxy offer, if any."""
    address = next((o for o in offers if o.yiaddr != UNSPECIFIED), None)
    if address is None:
        servers = ", ".join(o.src_ip for o in offers)
        raise PxeClientError(f"only offers without an address came (from {servers})")
    proxy = next((o for o in offers if o.is_proxy), None)
    return address, proxy


def boot_target(offer: Reply, ack: Reply, proxy: Reply | None) -> tuple[str | None, str | None]:
    """Boot file and next-server: the proxy's when it names a file, else the ACK's/offer's."""
    file = next((r.boot_file for r in (proxy, ack, offer) if r and r.boot_file), None)
    server = next((r.next_server for r in (proxy, ack, offer) if r and r.next_server), None)
    if proxy is not None and proxy.boot_file and not proxy.next_server:
        server = text_or_none(proxy.server_id) or server
    return file, server
