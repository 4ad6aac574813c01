"""IPv6 router advertisements that say "no router here", so iPXE stops waiting.

iPXE configures a NIC with every configurator at once (DHCPv4 and IPv6 autoconf) and
only runs its boot script when all are done. On a cluster network without an IPv6
router its router solicitations go unanswered and each boot stalls ~12 s (seen in the
lab: DHCP done at 13.4 s, script fetched at 26.2 s). iPXE ends IPv6 autoconfiguration
on any RA without the managed/other flags (ipxe src/net/ndp.c), so we answer each router
solicitation with an RA of router lifetime 0 (not a default router), no prefixes, no
flags: hosts learn nothing from it and keep their link-local addresses only.

Pure: :func:`router_advertisement`, :func:`is_router_solicitation`. The adapter is a raw
ICMPv6 socket on the cluster interface; the kernel fills in the ICMPv6 checksum.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from pathlib import Path

from provisioner.errors import BootServiceError
from provisioner.metrics import Metrics

log = logging.getLogger(__name__)

ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
OPT_SOURCE_LINK_ADDRESS = 1
ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"
NDP_HOP_LIMIT = 255  # RFC 4861: anything else is dropped by receivers
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def router_advertisement(mac: bytes) -> bytes:
    """An RA (ICMPv6 type 134) with lifetime 0, no M/O flags, no prefixes; checksum 0."""
    if len(mac) != 6:
        raise ValueError("a MAC address is 6 bytes")
    header = struct.pack("!BBHBBHII", ROUTER_ADVERTISEMENT, 0, 0, 0, 0, 0, 0, 0)
    return header + bytes((OPT_SOURCE_LINK_ADDRESS, 1)) + mac


def is_router_solicitation(data: bytes) -> bool:
    return len(data) >= 8 and data[0] == ROUTER_SOLICITATION and data[1] == 0


class RouterAdvertiser:
    def __init__(self, interface: str, metrics: Metrics):
        self.interface = interface
        self.metrics = metrics
        self.sock: socket.socket | None = None
        self.payload = b""

    def start(self) -> None:
        try:
            index = socket.if_nametoindex(self.interface)
            mac_text = Path(f"/sys/class/net/{self.interface}/address").read_text().strip()
            sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.interface.encode())
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, NDP_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, NDP_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            group = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("@I", index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
        except OSError as exc:
            raise BootServiceError(
                f"router advertisements on {self.interface}: {exc} (is IPv6 enabled there?)"
            ) from exc
        sock.setblocking(False)
        self.sock, self.index = sock, index
        self.payload = router_advertisement(bytes.fromhex(mac_text.replace(":", "")))
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        log.info("answering IPv6 router solicitations on %s (lifetime 0)", self.interface)

    def stop(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def _readable(self) -> None:
        assert self.sock is not None
        try:
            data, source = self.sock.recvfrom(1500)
        except OSError:
            return
        if not is_router_solicitation(data):
            return
        self.metrics.inc("provisioner_ra_sent_total")
        try:
            self.sock.sendto(self.payload, (ALL_NODES, 0, 0, self.index))
        except OSError as exc:
            log.debug("RA to %s failed: %s", source[0], exc)
