"""A DHCP relay's worth of PXE clients that lease and renew, one JSON line per answer.

Run inside a client namespace: ``python -m tests.integration.dhcp_relay SERVER RELAY
lease MAC...`` (DISCOVER -> OFFER -> REQUEST -> ACK for each MAC) or ``... renew
MAC=IP...`` (a RENEWING client's REQUEST: ciaddr set, no server id). Each MAC prints
``{"mac", "ip", "lease_time"}``, with ``ip`` null when no ACK came within the tries.
Replies come back to port 67 of RELAY (giaddr), as a relay agent gets them.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time

from scapy.layers.dhcp import BOOTP, DHCP

PXE = [("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\x00\x00")]
TRIES = 3
REPLY_TIMEOUT = 0.5
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6


def frame(mac: str, xid: int, relay: str, kind: int, extra: list[object], ciaddr: str) -> bytes:
    chaddr = bytes.fromhex(mac.replace(":", "")) + b"\0" * 10
    options = [("message-type", kind), *PXE, *extra, "end"]
    packet = BOOTP(op=1, chaddr=chaddr, xid=xid, giaddr=relay, hops=1, ciaddr=ciaddr)
    return bytes(packet / DHCP(options=options))


def ask(
    sock: socket.socket, server: str, data: bytes, xid: int, want: int
) -> tuple[str, int | None] | None:
    """(yiaddr, lease time) of the ``want`` reply to ``xid``; None on a NAK or silence."""
    sock.sendto(data, (server, 67))
    until = time.monotonic() + REPLY_TIMEOUT
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got, _ = sock.recvfrom(4096)
        except TimeoutError:
            return None
        packet = BOOTP(got)
        if packet.xid != xid or DHCP not in packet:
            continue
        opts = {o[0]: o[1] for o in packet[DHCP].options if isinstance(o, tuple)}
        kind = int(opts.get("message-type", 0))
        if kind == NAK:
            return None
        if kind == want:
            lease = opts.get("lease_time")
            return str(packet.yiaddr), int(lease) if lease is not None else None
    return None


def lease(sock: socket.socket, server: str, relay: str, mac: str) -> tuple[str, int | None] | None:
    for _ in range(TRIES):
        xid = random.getrandbits(32)
        offer = ask(sock, server, frame(mac, xid, relay, DISCOVER, [], "0.0.0.0"), xid, OFFER)
        if offer is None:
            continue
        extra = [("requested_addr", offer[0]), ("server_id", server)]
        acked = ask(sock, server, frame(mac, xid, relay, REQUEST, extra, "0.0.0.0"), xid, ACK)
        if acked is not None:
            return acked
    return None


def renew(
    sock: socket.socket, server: str, relay: str, mac: str, ip: str
) -> tuple[str, int | None] | None:
    for _ in range(TRIES):
        xid = random.getrandbits(32)
        acked = ask(sock, server, frame(mac, xid, relay, REQUEST, [], ip), xid, ACK)
        if acked is not None:
            return acked
    return None


def main(server: str, relay: str, verb: str, targets: list[str]) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((relay, 67))
    for target in targets:
        if verb == "lease":
            mac, got = target, lease(sock, server, relay, target)
        else:
            mac, ip = target.split("=")
            got = renew(sock, server, relay, mac, ip)
        ip_got, seconds = got if got is not None else (None, None)
        print(json.dumps({"mac": mac, "ip": ip_got, "lease_time": seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
