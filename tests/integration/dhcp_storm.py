"""A DHCP relay agent's worth of PXE clients, for the crash test (test_dhcp_crash.py).

Run inside the client namespace: ``python -m tests.integration.dhcp_storm SERVER RELAY
COUNT OUT``. Each of COUNT PXE clients (MAC 02:01:00:00:hi:lo) does DISCOVER -> OFFER ->
REQUEST -> ACK through this relay (giaddr RELAY, replies come back unicast to port 67
here), retrying while the server is down, and every ACK received is appended to OUT at
once (``{"mac": ..., "ip": ..., "server": ...}`` per line): what a client would hold after the
server died. SERVER may be several (``a,b``): a relay with two helper addresses. ``python
-m tests.integration.dhcp_storm renew SERVER RELAY LEASES OUT`` renews leases as clients
in RENEWING state do (test_two_serves_postgres.py).
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time

from scapy.layers.dhcp import BOOTP, DHCP

PXE = [("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\x00\x00")]  # BIOS
REPLY_TIMEOUT = 0.5
GIVE_UP_S = 120.0


def frame(mac: str, xid: int, relay: str, kind: str, extra: list[tuple[str, object]]) -> bytes:
    chaddr = bytes.fromhex(mac.replace(":", "")) + b"\0" * 10
    options = [("message-type", kind), *PXE, *extra, "end"]
    return bytes(BOOTP(op=1, chaddr=chaddr, xid=xid, giaddr=relay, hops=1) / DHCP(options=options))


def reply_of(data: bytes, xid: int) -> tuple[int, str, str] | None:
    """(message type, yiaddr, server id) of a reply to ``xid``, else None."""
    try:
        packet = BOOTP(data)
    except Exception:
        return None
    if packet.xid != xid or DHCP not in packet:
        return None
    opts = {o[0]: o[1] for o in packet[DHCP].options if isinstance(o, tuple)}
    return int(opts.get("message-type", 0)), str(packet.yiaddr), str(opts.get("server_id", ""))


def ask(
    sock: socket.socket, server: str, data: bytes, xid: int, want: int
) -> tuple[str, str] | None:
    """Send to the server, or to each of several (``a,b``: a relay with two helper
    addresses); the first reply of the wanted type wins."""
    for each in server.split(","):
        sock.sendto(data, (each, 67))
    until = time.monotonic() + REPLY_TIMEOUT
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            got, _ = sock.recvfrom(4096)
        except TimeoutError:
            return None
        answer = reply_of(got, xid)
        if answer is not None and answer[0] == want:
            return answer[1], answer[2]
        if answer is not None and answer[0] == 6:  # NAK: start over
            return None
    return None


def main(server: str, relay: str, count: int, out_path: str) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((relay, 67))
    deadline = time.monotonic() + GIVE_UP_S
    with open(out_path, "a", encoding="utf-8") as out:
        for i in range(count):
            mac = f"02:01:00:00:{i >> 8:02x}:{i & 0xFF:02x}"
            while time.monotonic() < deadline:
                xid = random.getrandbits(32)
                offered = ask(sock, server, frame(mac, xid, relay, "discover", []), xid, 2)
                if offered is None:
                    continue
                ip, server_id = offered
                extra = [("requested_addr", ip), ("server_id", server_id or server)]
                acked = ask(sock, server, frame(mac, xid, relay, "request", extra), xid, 5)
                if acked is not None:
                    record = {"mac": mac, "ip": acked[0], "server": acked[1]}
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                    break
            else:
                return 1
    return 0


def renew(server: str, relay: str, leases_path: str, out_path: str) -> int:
    """Each lease of LEASES (a file main() wrote) renewed as a client in RENEWING state
    does (RFC 2131 4.3.2: ciaddr set, no server id, no requested address), through the
    relay to ``server``; every ACK appended to OUT. 0 when every lease was renewed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((relay, 67))
    renewed = 0
    with open(leases_path, encoding="utf-8") as lines:
        leases = [json.loads(line) for line in lines]
    with open(out_path, "a", encoding="utf-8") as out:
        for lease in leases:
            chaddr = bytes.fromhex(lease["mac"].replace(":", "")) + b"\0" * 10
            for _ in range(5):
                xid = random.getrandbits(32)
                bootp = BOOTP(op=1, chaddr=chaddr, xid=xid, giaddr=relay, hops=1,
                              ciaddr=lease["ip"])  # fmt: skip
                data = bytes(bootp / DHCP(options=[("message-type", "request"), *PXE, "end"]))
                acked = ask(sock, server, data, xid, 5)
                if acked is not None:
                    out.write(json.dumps({"mac": lease["mac"], "ip": acked[0],
                                          "server": acked[1]}) + "\n")  # fmt: skip
                    renewed += 1
                    break
    return 0 if renewed == len(leases) else 1


if __name__ == "__main__":
    if sys.argv[1] == "renew":
        sys.exit(renew(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]))
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
