"""A scriptable PXE client: what PXE firmware, then iPXE, say to DHCP servers.

Run it inside a lab client namespace (see :mod:`provisioner.lab.netns`)::

    ip netns exec pvXXXXXX-client .venv/bin/python -m provisioner.lab.pxeclient \\
        --iface eth0 --mac 02:00:00:00:00:01 --arch 0 \\
        --vendor-class PXEClient:Arch:00000:UNDI:002001 --configure --json

Pure parts (building requests, reading replies, choosing the boot file) are apart
from the I/O parts (:func:`dhcp_exchange`, :func:`pxe_boot_server_request`,
:func:`configure`), which refuse to run in the machine's own network namespace.
Failures raise :class:`PxeClientError` (a :class:`~provisioner.lab.netns.LabError`).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Any

from scapy.layers.dhcp import BOOTP
from scapy.layers.inet import UDP
from scapy.sendrecv import AsyncSniffer, sendp

from provisioner.lab.netns import LabError
from provisioner.lab.pxepacket import (
    BOOT_SERVER_PORT,
    CLIENT_PORT,
    DEFAULT_OFFER_WINDOW,
    DEFAULT_TIMEOUT,
    NETNS_RUN_DIR,
    RETRANSMIT_INTERVAL,
    UNSPECIFIED,
    Exchange,
    MessageType,
    PxeClientError,
    PxeIdentity,
    Reply,
    boot_target,
    build_boot_server_request,
    build_discover,
    build_request,
    choose,
    first_menu_item,
    parse_reply,
    text_or_none,
)

# -- I/O -----------------------------------------------------------------------


def require_lab_namespace() -> None:
    """Refuse to talk DHCP or change addresses outside a named (``ip netns``) namespace.

    Like ``ip netns identify``: this process's netns must be one of /run/netns/*.
    """
    try:
        ours = os.stat("/proc/self/ns/net")
        named = [os.stat(entry.path) for entry in os.scandir(NETNS_RUN_DIR)]
    except FileNotFoundError:
        named = []
    except OSError as exc:
        raise PxeClientError(f"cannot tell which network namespace this is: {exc}") from exc
    if not any((st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino) for st in named):
        raise PxeClientError(
            "refusing to run outside a lab network namespace; use ip netns exec CLIENT ..."
        )


class _Capture:
    """An AsyncSniffer on ``iface`` feeding BOOTP replies for one xid into a queue."""

    def __init__(self, iface: str, xid: int) -> None:
        self.replies: queue.Queue[Reply] = queue.Queue()
        self._ready = threading.Event()
        self._xid = xid
        # No BPF filter: it would need tcpdump to compile; filter in Python instead.
        self._sniffer = AsyncSniffer(
            iface=iface,
            store=False,
            lfilter=self._wanted,
            prn=self._push,
            started_callback=self._ready.set,
        )

    def _wanted(self, packet: Any) -> bool:
        return (
            UDP in packet
            and packet[UDP].dport == CLIENT_PORT
            and BOOTP in packet
            and packet[BOOTP].op == 2
            and packet[BOOTP].xid == self._xid
        )

    def _push(self, packet: Any) -> None:
        reply = parse_reply(packet)
        if reply is not None:
            self.replies.put(reply)

    def __enter__(self) -> _Capture:
        self._sniffer.start()
        if not self._ready.wait(5.0):
            error = getattr(self._sniffer, "exception", None)
            raise PxeClientError(f"packet capture did not start: {error or 'timeout'}")
        return self

    def __exit__(self, *exc: object) -> None:
        if getattr(self._sniffer, "running", False):
            self._sniffer.stop(join=True)

    def collect(self, until: float) -> list[Reply]:
        """Replies that arrive before the monotonic deadline ``until``."""
        got: list[Reply] = []
        while (left := until - time.monotonic()) > 0:
            try:
                got.append(self.replies.get(timeout=left))
            except queue.Empty:
                break
        return got

    def next(self, until: float) -> Reply | None:
        left = until - time.monotonic()
        if left <= 0:
            return None
        try:
            return self.replies.get(timeout=left)
        except queue.Empty:
            return None


def _send(frame: Any, iface: str) -> None:
    sendp(frame, iface=iface, verbose=False)


def dhcp_exchange(
    iface: str,
    mac: str,
    *,
    arch: int | None = None,
    vendor_class: str | None = None,
    user_class: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    offer_window: float = DEFAULT_OFFER_WINDOW,
    guid: uuid.UUID | None = None,
) -> Exchange:
    """DISCOVER, gather every OFFER for ``offer_window`` s, REQUEST the address one, ACK."""
    require_lab_namespace()
    ident = PxeIdentity.for_mac(
        mac, arch=arch, vendor_class=vendor_class, user_class=user_class, guid=guid
    )
    xid = int.from_bytes(os.urandom(4), "big")
    deadline = time.monotonic() + timeout
    with _Capture(iface, xid) as capture:
        offers = _discover(capture, iface, ident, xid, deadline, offer_window)
        offer, proxy = choose(offers)
        ack = _request(capture, iface, ident, xid, offer, deadline)
    file, server = boot_target(offer, ack, proxy)
    return Exchange(xid, offer, ack, proxy, tuple(offers), file, server)


def _discover(
    capture: _Capture,
    iface: str,
    ident: PxeIdentity,
    xid: int,
    deadline: float,
    window: float,
) -> list[Reply]:
    """Offers, one per server: DISCOVER again every 2 s until an address offer comes.

    A proxyDHCP offer may come well before the address offer (dnsmasq pings a fresh
    address for ~3 s first), so the window starts at the first *address* offer.
    """
    discover = build_discover(ident, xid)
    offers: dict[str, Reply] = {}
    next_send = time.monotonic()
    while not any(o.yiaddr != UNSPECIFIED for o in offers.values()):
        now = time.monotonic()
        if now >= deadline:
            if offers:
                choose(list(offers.values()))  # raises: only offers without an address
            raise PxeClientError(f"no DHCPOFFER on {iface} for mac={ident.mac} (xid {xid:#x})")
        if now >= next_send:
            _send(discover, iface)
            next_send = now + RETRANSMIT_INTERVAL
        reply = capture.next(min(deadline, next_send))
        if reply is not None and reply.message_type == MessageType.OFFER:
            offers.setdefault(reply.src_ip, reply)
    for reply in capture.collect(min(deadline, time.monotonic() + window)):
        if reply.message_type == MessageType.OFFER:
            offers.setdefault(reply.src_ip, reply)
    return list(offers.values())


def _request(
    capture: _Capture,
    iface: str,
    ident: PxeIdentity,
    xid: int,
    offer: Reply,
    deadline: float,
) -> Reply:
    request = build_request(ident, xid, offer)
    while time.monotonic() < deadline:
        _send(request, iface)
        until = min(deadline, time.monotonic() + RETRANSMIT_INTERVAL)
        while (reply := capture.next(until)) is not None:
            if reply.server_id != offer.server_id:
                continue  # e.g. a proxyDHCP's answer, or a late offer
            if reply.message_type == MessageType.NAK:
                raise PxeClientError(f"DHCPNAK from {offer.server_id} for {offer.yiaddr}")
            if reply.message_type == MessageType.ACK:
                return reply
    raise PxeClientError(f"no DHCPACK from {offer.server_id} for {offer.yiaddr} on {iface}")


def configure(iface: str, address: IPv4Address | str, prefix: int) -> None:
    """Put ``address/prefix`` on ``iface`` in this (lab) namespace."""
    require_lab_namespace()
    argv = ["ip", "addr", "replace", f"{address}/{prefix}", "dev", iface]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PxeClientError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


def pxe_boot_server_request(
    iface: str,
    mac: str,
    client_ip: IPv4Address | str,
    server_ip: IPv4Address | str,
    port: int = BOOT_SERVER_PORT,
    *,
    arch: int | None = None,
    vendor_class: str | None = None,
    user_class: str | None = None,
    boot_item: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    guid: uuid.UUID | None = None,
) -> Reply:
    """Unicast a REQUEST to a PXE boot server from ``client_ip``:68 and return its ACK."""
    require_lab_namespace()
    ident = PxeIdentity.for_mac(
        mac, arch=arch, vendor_class=vendor_class, user_class=user_class, guid=guid
    )
    xid = int.from_bytes(os.urandom(4), "big")
    payload = build_boot_server_request(ident, xid, IPv4Address(str(client_ip)), boot_item)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
        sock.bind((str(client_ip), CLIENT_PORT))
        while time.monotonic() < deadline:
            sock.sendto(payload, (str(server_ip), port))
            until = min(deadline, time.monotonic() + RETRANSMIT_INTERVAL)
            while (left := until - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data, (src, _) = sock.recvfrom(4096)
                except TimeoutError:
                    break
                reply = _parse_datagram(data, src)
                if reply is not None and reply.xid == xid:
                    return reply
    raise PxeClientError(f"no answer from boot server {server_ip}:{port} within {timeout}s")


def _parse_datagram(data: bytes, src: str) -> Reply | None:
    try:
        return parse_reply(BOOTP(data), src_ip=src)
    except Exception:  # a malformed datagram is not our answer
        return None


# -- CLI -----------------------------------------------------------------------


def _iface_mac(iface: str) -> str:
    with open(f"/sys/class/net/{iface}/address", encoding="ascii") as f:
        return f.read().strip()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m provisioner.lab.pxeclient",
        description="Play PXE firmware / iPXE against DHCP servers (run inside a lab netns).",
    )
    p.add_argument("--iface", default="eth0")
    p.add_argument("--mac", help="client MAC (default: the interface's)")
    p.add_argument("--arch", type=int, default=None, help="option 93 (0 = BIOS, 7 = x64 UEFI)")
    p.add_argument("--vendor-class", help="option 60, e.g. PXEClient:Arch:00000:UNDI:002001")
    p.add_argument("--user-class", help="option 77, e.g. iPXE")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    p.add_argument("--offer-window", type=float, default=DEFAULT_OFFER_WINDOW)
    p.add_argument("--configure", action="store_true", help="put the leased address on iface")
    p.add_argument("--boot-server-port", type=int, help="then ask a PXE boot server on this port")
    p.add_argument("--boot-server", help="boot server address (default: proxy's, else next-server)")
    p.add_argument("--boot-item", type=int, help="option 43 boot item type (default: from menu)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _run_cli(args: argparse.Namespace) -> dict[str, object]:
    mac = (args.mac or _iface_mac(args.iface)).lower()
    ex = dhcp_exchange(
        args.iface, mac, arch=args.arch, vendor_class=args.vendor_class,
        user_class=args.user_class, timeout=args.timeout, offer_window=args.offer_window,
    )  # fmt: skip
    result: dict[str, object] = {"ok": True, "iface": args.iface, "mac": mac, **ex.to_json()}
    result["configured"] = False
    result["boot_server"] = None
    if args.configure:
        configure(args.iface, ex.ack.yiaddr, ex.address.network.prefixlen)
        result["configured"] = True
    if args.boot_server_port is not None:
        server = args.boot_server or text_or_none(ex.proxy.server_id if ex.proxy else None)
        server = server or ex.next_server
        if server is None:
            raise PxeClientError("no boot server: give --boot-server")
        item = args.boot_item
        if item is None and ex.proxy is not None:
            item = first_menu_item(ex.proxy.vendor_specific)
        reply = pxe_boot_server_request(
            args.iface, mac, ex.ack.yiaddr, server, args.boot_server_port,
            arch=args.arch, vendor_class=args.vendor_class, user_class=args.user_class,
            boot_item=item, timeout=args.timeout,
        )  # fmt: skip
        result["boot_server"] = {
            **reply.to_json(),
            "boot_file": reply.boot_file,
            "next_server": reply.next_server or server,
        }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.boot_server_port is not None and not args.configure:
        _parser().error("--boot-server-port needs --configure (the request comes from the lease)")
    try:
        require_lab_namespace()
        result = _run_cli(args)
    except (LabError, OSError) as exc:
        print(f"pxeclient: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"address {result['address']}/{result['prefix']} from {result['server_id']}")
        print(f"boot file {result['boot_file']} from {result['next_server']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
