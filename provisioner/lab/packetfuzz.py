"""Mutated DHCP, PXE and TFTP datagrams for a live boot service (issue 20, item 3).

Run it inside a lab namespace, aimed at a running ``provisioner serve``::

    ip netns exec pvXXXXXX-fuzz .venv/bin/python -m provisioner.lab.packetfuzz \\
        --target 10.53.0.1 --count 100000 --rate 2000 --seed 1

Pure part: :func:`seeds` (valid packets of each kind: PXE and iPXE DISCOVERs and
REQUESTs, a boot-server REQUEST, INFORM, RELEASE, DECLINE; TFTP read and write requests
with options, ACK, DATA, ERROR) and :func:`generate`, which turns them into a reproducible
stream of ``(port, datagram)``: mostly byte mutations of a seed (bits flipped, bytes set,
cut, grown, spliced, an option length broken), some scapy ``fuzz()`` packets (random
field values in a valid layout). The I/O part, :func:`send`, paces them to ports 67,
4011 and 69, each from a fresh source port (TFTP keys a session by it), and prints how
many went to each port as JSON: what the server's counters must add up to.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.tftp import (
    TFTP,
    TFTP_ACK,
    TFTP_DATA,
    TFTP_ERROR,
    TFTP_RRQ,
    TFTP_WRQ,
    TFTP_Option,
    TFTP_Options,
)
from scapy.packet import fuzz

from provisioner.lab.pxeclient import require_lab_namespace

DHCP_PORT, PXE_PORT, TFTP_PORT = 67, 4011, 69
PORTS = (DHCP_PORT, PXE_PORT, TFTP_PORT)
FUZZ_SHARE = 0.1  # of the datagrams: scapy fuzz() (slow to build); the rest byte mutations
INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
MAX_DATAGRAM = 1472  # one Ethernet frame's UDP payload
CHADDR = bytes.fromhex("02fa0000") + b"\0" * 12
PXE_BIOS = [("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\x00\x00")]
PXE_UEFI = [("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016"), (93, b"\x00\x07")]


def _dhcp(kind: str, options: Sequence[object], **bootp: Any) -> bytes:
    fields: dict[str, Any] = {"op": 1, "xid": 0x0F0E0D0C, "chaddr": CHADDR, **bootp}
    return bytes(BOOTP(**fields) / DHCP(options=[("message-type", kind), *options, "end"]))


def seeds(server: str) -> dict[int, list[bytes]]:
    """Valid datagrams for each port, the starting points of the mutations."""
    dhcp = [
        _dhcp("discover", PXE_BIOS, flags=0x8000),
        _dhcp("discover", [*PXE_UEFI, (77, b"iPXE"), (97, b"\x00" + b"\x11" * 16)]),
        _dhcp("request", [*PXE_BIOS, ("requested_addr", "10.53.1.9"), ("server_id", server)]),
        _dhcp("request", PXE_UEFI, ciaddr="10.53.1.10"),
        _dhcp("inform", PXE_BIOS, ciaddr="10.53.1.11"),
        _dhcp("release", [("server_id", server)], ciaddr="10.53.1.12"),
        _dhcp("decline", [("requested_addr", "10.53.1.13"), ("server_id", server)]),
    ]
    boot_server = _dhcp("request", [*PXE_BIOS, (43, b"\x47\x04\x80\x00\x00\x00\xff")])
    tftp = [
        bytes(TFTP() / TFTP_RRQ(filename=b"undionly.kpxe", mode=b"octet")),
        bytes(
            TFTP()
            / TFTP_RRQ(filename=b"ipxe.efi", mode=b"octet")
            / TFTP_Options(
                options=[
                    TFTP_Option(oname=b"blksize", value=b"1468"),
                    TFTP_Option(oname=b"tsize", value=b"0"),
                ]
            )
        ),
        bytes(TFTP() / TFTP_RRQ(filename=b"missing.bin", mode=b"netascii")),
        bytes(TFTP() / TFTP_WRQ(filename=b"upload.bin", mode=b"octet")),
        bytes(TFTP() / TFTP_ACK(block=1)),
        bytes(TFTP() / TFTP_DATA(block=1) / (b"x" * 512)),
        bytes(TFTP() / TFTP_ERROR(errorcode=2, errormsg=b"access")),
    ]
    return {DHCP_PORT: dhcp, PXE_PORT: [boot_server, *dhcp[:3]], TFTP_PORT: tftp}


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits of ``data``; never longer than one frame's payload."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        at = rng.randrange(len(out)) if out else 0
        if op == 0 and out:  # flip a bit
            out[at] ^= 1 << rng.randrange(8)
        elif op == 1 and out:  # a random byte
            out[at] = rng.randrange(256)
        elif op == 2 and out:  # a byte parsers trip on
            out[at] = rng.choice(INTERESTING)
        elif op == 3:  # cut
            del out[rng.randrange(len(out) + 1) :]
        elif op == 4:  # grow
            out += rng.randbytes(rng.randrange(1, 64))
        elif op == 5:  # insert
            out[at:at] = rng.randbytes(rng.randrange(1, 16))
        elif op == 6 and out:  # delete a run
            del out[at : at + rng.randrange(1, 16)]
        elif op == 7 and len(out) > 240:  # an option's length byte (after the cookie)
            out[rng.randrange(240, len(out))] = rng.choice((0, 1, 0xFF, len(out) & 0xFF))
    return bytes(out[:MAX_DATAGRAM])


def fuzzed(port: int, rng: random.Random) -> bytes:
    """A scapy ``fuzz()`` packet of the port's protocol: random values, valid layout."""
    random.seed(rng.getrandbits(32))  # scapy's volatile values draw from the global RNG
    for _ in range(5):
        try:
            if port == TFTP_PORT:
                layer = rng.choice((TFTP_RRQ, TFTP_WRQ, TFTP_ACK, TFTP_DATA, TFTP_ERROR))
                return bytes(fuzz(TFTP() / layer()))[:MAX_DATAGRAM]
            options = [("message-type", rng.randint(1, 8)), *PXE_BIOS, "end"]
            return bytes(fuzz(BOOTP(chaddr=CHADDR)) / DHCP(options=options))[:MAX_DATAGRAM]
        except Exception:  # a field scapy cannot build from its own random value
            continue
    return rng.randbytes(rng.randrange(1, 600))


def generate(server: str, count: int, seed: int) -> Iterator[tuple[int, bytes]]:
    """``count`` datagrams, ports in turn (67, 4011, 69, ...), the same for the same seed."""
    rng = random.Random(seed)
    start = seeds(server)
    for i in range(count):
        port = PORTS[i % len(PORTS)]
        if rng.random() < FUZZ_SHARE:
            yield port, fuzzed(port, rng)
        else:
            yield port, mutate(rng.choice(start[port]), rng)


# -- I/O -----------------------------------------------------------------------


def send(target: str, count: int, seed: int, rate: float) -> dict[str, float]:
    """Send the stream to ``target`` at about ``rate`` datagrams/s: the count sent to
    each port (keys "67", "4011", "69") and the seconds it took."""
    sent = dict.fromkeys(PORTS, 0)
    started = time.monotonic()
    for i, (port, data) in enumerate(generate(target, count, seed)):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(data, (target, port))
        sent[port] += 1
        ahead = started + (i + 1) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    counts: dict[str, float] = {str(port): n for port, n in sent.items()}
    return counts | {"seconds": round(time.monotonic() - started, 3)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="the boot service's address")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=2000.0, help="datagrams per second")
    args = parser.parse_args(argv)
    require_lab_namespace()
    print(json.dumps(send(args.target, args.count, args.seed, args.rate)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
