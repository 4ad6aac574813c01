"""One segment's share of the boot storm (bench/storm_bench.py), run in its client namespace.

    python bench/storm_client.py IFACE LOCAL_IP SERVER_IP MAC_PREFIX COUNT OUT.json

Plays COUNT PXE clients (MACs MAC_PREFIX:00:01 ..) behind a DHCP relay at LOCAL_IP (the
replies come back to port 67 here, as to a relay agent): each does DISCOVER, OFFER,
REQUEST, ACK (:data:`WINDOW` at a time, resent after :data:`RESEND_S`). Then each leased
address is put on IFACE, and from it each client does what iPXE does next over one
HTTP/1.1 connection: GET its boot script ``/boot/<mac>.ipxe``, then the kernel the script
names, as a range request for its first :data:`KERNEL_RANGE` bytes (206 expected). Writes
the counts, the phases' seconds and the first failures to OUT.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from provisioner.boot.dhcp_codec import DhcpPacket, MessageType, decode, encode  # noqa: E402

WINDOW = 64  # exchanges in flight
RESEND_S = 2.0
TRIES = 5
HTTP_WINDOW = 64  # HTTP clients at once
KERNEL_RANGE = 65536
PXE = ((60, b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\x00\x00"))
ZERO = IPv4Address(0)


class Exchange:
    def __init__(self, mac: bytes, xid: int):
        self.mac = mac
        self.xid = xid
        self.kind = MessageType.DISCOVER
        self.offered: IPv4Address | None = None
        self.server: bytes | None = None
        self.sent = 0.0
        self.tries = 0
        self.ip: IPv4Address | None = None


def packet(ex: Exchange, relay: IPv4Address) -> bytes:
    options: list[tuple[int, bytes]] = [(53, bytes((ex.kind,)))]
    if ex.kind is MessageType.REQUEST:
        assert ex.offered is not None and ex.server is not None
        options += [(50, ex.offered.packed), (54, ex.server)]
    return encode(DhcpPacket(
        op=1, htype=1, hlen=6, hops=1, xid=ex.xid, secs=0, flags=0, ciaddr=ZERO,
        yiaddr=ZERO, siaddr=ZERO, giaddr=relay, chaddr=ex.mac + bytes(10), sname="",
        file="", options=tuple(options + list(PXE)),
    ))  # fmt: skip


async def dhcp_phase(local: str, server: str, macs: list[bytes]) -> tuple[list[Exchange], int]:
    """Every client's DORA; (the exchanges, OFFERs received)."""
    relay = IPv4Address(local)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((local, 67))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    todo = [Exchange(mac, 0x10000000 + i) for i, mac in enumerate(macs)]
    by_xid = {ex.xid: ex for ex in todo}
    queue = list(reversed(todo))
    flying: dict[int, Exchange] = {}
    offers = 0
    done = asyncio.Event()

    def send(ex: Exchange) -> None:
        ex.sent = time.monotonic()
        ex.tries += 1
        sock.sendto(packet(ex, relay), (server, 67))

    def fill() -> None:
        while queue and len(flying) < WINDOW:
            ex = queue.pop()
            flying[ex.xid] = ex
            send(ex)
        if not queue and not flying:
            done.set()

    def readable() -> None:
        nonlocal offers
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                break
            try:
                reply = decode(data)
            except Exception:
                continue
            ex = flying.get(reply.xid)
            if ex is None:
                continue
            if reply.message_type is MessageType.OFFER and ex.kind is MessageType.DISCOVER:
                offers += 1
                ex.kind, ex.offered, ex.tries = MessageType.REQUEST, reply.yiaddr, 0
                ex.server = reply.option(54)
                send(ex)
            elif reply.message_type is MessageType.ACK and ex.kind is MessageType.REQUEST:
                ex.ip = reply.yiaddr
                del flying[ex.xid]
            elif reply.message_type is MessageType.NAK:
                ex.kind, ex.tries = MessageType.DISCOVER, 0
                send(ex)
        fill()

    loop.add_reader(sock.fileno(), readable)
    fill()
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.5)
        now = time.monotonic()
        for ex in list(flying.values()):
            if now - ex.sent >= RESEND_S:
                if ex.tries >= TRIES:
                    del flying[ex.xid]
                else:
                    send(ex)
        fill()
    loop.remove_reader(sock.fileno())
    sock.close()
    return [by_xid[ex.xid] for ex in todo], offers


async def fetch(ip: str, server: str, mac: str) -> str | None:
    """The boot script, then the kernel's first KERNEL_RANGE bytes; None, or what failed."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(server, 8080, local_addr=(ip, 0)), 30
        )
    except (OSError, TimeoutError) as exc:
        return f"{mac}: connect: {exc}"
    try:
        status, body = await request(reader, writer, server, f"/boot/{mac}.ipxe", None)
        if status != 200:
            return f"{mac}: boot script: HTTP {status} {body[:120]!r}"
        found = re.search(rb"^kernel\s+http://[^/\s]+(/\S+)", body, re.MULTILINE)
        if found is None:
            return f"{mac}: no kernel line in {body[:200]!r}"
        rng = f"bytes=0-{KERNEL_RANGE - 1}"
        status, body = await request(reader, writer, server, found.group(1).decode(), rng)
        if status != 206 or len(body) != KERNEL_RANGE:
            return f"{mac}: kernel: HTTP {status}, {len(body)} bytes"
        return None
    except (OSError, TimeoutError, ValueError) as exc:
        return f"{mac}: {type(exc).__name__}: {exc}"
    finally:
        writer.close()


async def request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str,
    rng: str | None,
) -> tuple[int, bytes]:  # fmt: skip
    head = f"GET {path} HTTP/1.1\r\nHost: {host}:8080\r\nUser-Agent: iPXE/1.21\r\n"
    if rng:
        head += f"Range: {rng}\r\n"
    writer.write((head + "\r\n").encode())
    status_line = await asyncio.wait_for(reader.readline(), 60)
    status = int(status_line.split()[1])
    length = 0
    while (line := await asyncio.wait_for(reader.readline(), 60)) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return status, await asyncio.wait_for(reader.readexactly(length), 60)


async def http_phase(server: str, clients: list[tuple[str, str]]) -> list[str]:
    gate = asyncio.Semaphore(HTTP_WINDOW)

    async def one(ip: str, mac: str) -> str | None:
        async with gate:
            return await fetch(ip, server, mac)

    results = await asyncio.gather(*(one(ip, mac) for ip, mac in clients))
    return [r for r in results if r]


def main(argv: list[str]) -> int:
    iface, local, server, prefix, count, out = (
        argv[0],
        argv[1],
        argv[2],
        argv[3],
        int(argv[4]),
        argv[5],
    )
    base = bytes.fromhex(prefix.replace(":", ""))
    macs = [base + i.to_bytes(6 - len(base), "big") for i in range(1, count + 1)]
    started = time.monotonic()
    exchanges, offers = asyncio.run(dhcp_phase(local, server, macs))
    dhcp_s = time.monotonic() - started
    leased = [(str(ex.ip), ex.mac.hex(":")) for ex in exchanges if ex.ip is not None]
    failures = [f"{ex.mac.hex(':')}: no ACK" for ex in exchanges if ex.ip is None]
    batch = "".join(f"addr add {ip}/32 dev {iface}\n" for ip, _ in leased)
    subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True)
    http_started = time.monotonic()
    failures += asyncio.run(http_phase(server, leased))
    http_s = time.monotonic() - http_started
    result = {
        "clients": count, "offers": offers, "acks": len(leased),
        "unique_addresses": len({ip for ip, _ in leased}), "dhcp_s": round(dhcp_s, 2),
        "http_s": round(http_s, 2), "booted": count - len(failures),
        "failures": len(failures), "first_failures": failures[:10],
    }  # fmt: skip
    Path(out).write_text(json.dumps(result))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
