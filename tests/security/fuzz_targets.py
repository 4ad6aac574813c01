"""The parsers' fuzz harnesses (issue 20, item 3): one function per target, bytes in.

A harness returns when its parser answered or refused in its own way, and raises anything
else: that is a finding. The same functions serve three runs:

- bench/fuzz_bench.py: atheris (libFuzzer), coverage-guided, 10^6 inputs a target;
- tests/security/test_fuzz.py: Hypothesis, random and mutated inputs (CI's short run);
- tests/security/test_fuzz_targets.py: every seed, in-process, so the harnesses cannot rot.

The targets, with what counts as a refusal and what each checks beyond "nothing raised":

- ``dhcp``: ``decode`` (DhcpDecodeError refuses); what decodes goes to ``decide`` as the
  DHCP server (full mode, port 67), the PXE boot server (4011) and proxyDHCP, each with
  leases already held; a reply is encoded within the client's option 57 as the adapter
  does (DhcpReplyTooLarge: the adapter drops the request; its renewal form too,
  ``with_lease_time``) and must decode back to itself.
- ``tftp``: the guard tftpy's sessions parse with (``_GuardedFactory``; TftpException
  ends that session alone): every datagram counted exactly once, as a request or as
  malformed; an admitted request's options normalized, its name one quoted path component
  that unquotes to the name ``confine`` then judges (TftpPathError refuses) against a
  served root holding files, a folder and a symlink out; what it confines to is a regular
  file inside the root. The same datagram as a session's later packet must not raise past
  the guard either.
- ``dns``: ``answer`` over UDP and TCP, with and without upstream servers: None (not DNS),
  a Forward, or a Reply that fits the transport and is itself a DNS message.

Module-level values are built once; each call starts from them afresh (a new lease
table, a new guard), so an input's outcome does not depend on the ones before it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from urllib.parse import unquote

import dns.message
import dns.opcode
import tftpy
from scapy.layers.dhcp import BOOTP, DHCP

from provisioner.boot.dhcp_codec import MessageType, decode, encode
from provisioner.boot.dhcp_policy import DhcpMode, PolicyConfig, decide, with_lease_time
from provisioner.boot.leases import LeaseTable
from provisioner.boot.paths import confine
from provisioner.boot.tftp import MAX_BLKSIZE, MIN_BLKSIZE, TftpStats, _GuardedFactory
from provisioner.dns.zone import Forward, Reply, answer, build_zone
from provisioner.errors import DhcpDecodeError, DhcpReplyTooLarge, TftpPathError
from provisioner.lab import packetfuzz
from provisioner.lab.pxepacket import PxeIdentity, build_boot_server_request, build_discover

Harness = Callable[[bytes], None]

# ----------------------------------------------------------------------------------- DHCP

SERVER = IPv4Address("10.53.0.1")
SUBNET = IPv4Network("10.53.0.0/16")
NOW = 1000.0
FULL = PolicyConfig(
    mode=DhcpMode.FULL, server_ip=SERVER, http_port=8080, subnet=SUBNET,
    pool_start=IPv4Address("10.53.1.5"), pool_end=IPv4Address("10.53.1.20"),
    router=IPv4Address("10.53.0.254"), dns_servers=(SERVER,), domain="cluster.lan",
    reservations={"02:fa:00:00:00:01": IPv4Address("10.53.1.5")},
)  # fmt: skip
PROXY = replace(FULL, mode=DhcpMode.PROXY, pool_start=None, pool_end=None, reservations={})
# Held addresses: one by the seeds' MAC (a DECLINE or renewal of it counts), one by another.
LEASES = {
    IPv4Address("10.53.1.13"): "02:fa:00:00:00:00",
    IPv4Address("10.53.1.6"): "02:fa:00:00:00:02",
}
RENEWAL_SECONDS = 120  # what the adapter's fallback ACK may say: the time the registry holds


def dhcp_seeds() -> list[bytes]:
    """Valid requests, from the lab's own builders: what a PXE ROM, iPXE, UEFI HTTP boot
    and arm64 firmware send, to port 67 and to the boot server; relayed (with the least
    maximum message size a client may state, 576); overloaded."""
    by_port = packetfuzz.seeds(str(SERVER))
    seeds = [*by_port[packetfuzz.DHCP_PORT], *by_port[packetfuzz.PXE_PORT]]
    firmware = (
        (0, "PXEClient:Arch:00000:UNDI:002001", None),
        (7, "PXEClient:Arch:00007:UNDI:003016", None),
        (7, "PXEClient:Arch:00007:UNDI:003016", "iPXE"),
        (16, "HTTPClient:Arch:00016:UNDI:003016", None),
        (11, "PXEClient:Arch:00011:UNDI:003016", None),
    )
    for n, (arch, vendor, user) in enumerate(firmware):
        ident = PxeIdentity.for_mac(f"02:fa:00:00:00:{n:02x}", arch=arch, vendor_class=vendor,
                                    user_class=user)  # fmt: skip
        seeds.append(bytes(build_discover(ident, 0x100 + n)[BOOTP]))
        seeds.append(build_boot_server_request(ident, 0x200 + n, IPv4Address("10.53.1.9"), 0x8000))
    pxe = [("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\x00\x00")]
    relay_info = (82, b"\x01\x04eth0\x02\x06\x02\xfa\x00\x00\x00\x09")
    seeds.append(bytes(
        BOOTP(op=1, hops=1, xid=0x300, giaddr="10.53.2.1", chaddr=packetfuzz.CHADDR)
        / DHCP(options=[("message-type", "discover"), *pxe, (57, b"\x02\x40"), relay_info, "end"])
    ))  # fmt: skip
    file_options = bytes((67, 8)) + b"boot.efi" + bytes((255,))
    seeds.append(bytes(
        BOOTP(op=1, xid=0x301, chaddr=packetfuzz.CHADDR, file=file_options)
        / DHCP(options=[("message-type", "request"), *pxe, (52, b"\x01"), "end"])
    ))  # fmt: skip
    return seeds


def dhcp_one(data: bytes) -> None:
    """One datagram to ports 67 and 4011, as the adapter handles it (see the docstring)."""
    try:
        packet = decode(data)
    except DhcpDecodeError:
        return  # refused: counted as malformed by the adapter
    for policy, port in ((FULL, 67), (FULL, 4011), (PROXY, 67)):
        leases = LeaseTable.from_mapping(LEASES, expires=NOW + 3600)
        decision = decide(packet, policy, port=port, leases=leases, now=NOW)
        reply = decision.reply
        if reply is None:
            assert decision.destination is None, decision
            continue
        assert decision.destination is not None, decision
        try:
            wire = encode(reply, max_size=packet.max_message_size)
        except DhcpReplyTooLarge:
            continue  # the request's own option 82 echoed: dropped whole by the adapter
        assert decode(wire) == reply, (reply, wire.hex())
        if reply.message_type is MessageType.ACK:
            encode(with_lease_time(reply, RENEWAL_SECONDS), max_size=packet.max_message_size)


# ----------------------------------------------------------------------------------- TFTP

SERVED = ("undionly.kpxe", "ipxe.efi", "arm64/ipxe.efi")
OPTION_NAMES = frozenset({"blksize", "tsize"})


def make_tftp_root(folder: Path) -> Path:
    """A served root as serve's: the boot files, a folder, a symlink out (to refuse)."""
    root = folder / "tftp"
    (root / "arm64").mkdir(parents=True, exist_ok=True)
    for name in SERVED:
        (root / name).write_bytes(b"x" * 1024)
    (folder / "outside.txt").write_bytes(b"not served")
    out = root / "out"
    if not out.is_symlink():
        out.symlink_to(folder / "outside.txt")
    return root


class _Service:
    def __init__(self) -> None:
        self.stats = TftpStats()


def tftp_seeds() -> list[bytes]:
    """The live fuzzer's (requests with options, ACK, DATA, ERROR), and requests for what
    the root holds, for a traversal, for the symlink out, with options in capitals."""
    seeds = list(packetfuzz.seeds(str(SERVER))[packetfuzz.TFTP_PORT])
    for name in (*SERVED, "../outside.txt", "out", "arm64/../ipxe.efi"):
        seeds.append(b"\x00\x01" + name.encode() + b"\x00octet\x00")
    seeds.append(b"\x00\x01ipxe.efi\x00OCTET\x00BLKSIZE\x0099999\x00TSIZE\x000\x00")
    seeds.append(b"\x00\x06blksize\x001428\x00")  # an OACK, from no server
    return seeds


def tftp_harness(root: Path) -> Harness:
    """The ``tftp`` target over the served ``root`` (see the module docstring)."""
    real_root = Path(os.path.realpath(root))

    def tftp_one(data: bytes) -> None:
        service = _Service()
        guard = _GuardedFactory(service, busy=False)  # type: ignore[arg-type]
        try:
            packet = guard.parse(data)
        except tftpy.TftpException:
            assert (service.stats.malformed, service.stats.requests) == (1, 0), service.stats
        else:
            assert (service.stats.malformed, service.stats.requests) == (0, 1), service.stats
            _confined(packet, real_root)
        later = _GuardedFactory(service, busy=False)  # type: ignore[arg-type]
        later._first = False  # a packet within a session in progress: parsed, not admitted
        with contextlib.suppress(tftpy.TftpException):
            later.parse(data)

    return tftp_one


def _confined(packet: object, real_root: Path) -> None:
    """An admitted request: options and name as tftpy will act on them; then confine()."""
    options: dict[str, str] = packet.options  # type: ignore[attr-defined]
    assert set(options) <= OPTION_NAMES, options
    assert all(value.isascii() and value.isdigit() for value in options.values()), options
    if "blksize" in options:
        assert MIN_BLKSIZE <= int(options["blksize"]) <= MAX_BLKSIZE, options
    token: str = packet.filename  # type: ignore[attr-defined]
    assert token.startswith("t") and "/" not in token and "\\" not in token, token
    try:
        path = confine(real_root, unquote(token.removeprefix("t")))
    except TftpPathError:
        return  # refused: the client gets a TFTP error
    assert path.is_relative_to(real_root) and path.is_file(), path


# ------------------------------------------------------------------------------------ DNS

ZONE = build_zone("cluster.lan", SERVER, SUBNET, [("node0", "10.53.1.9")], [("c", "node0")])


def dns_seeds() -> list[bytes]:
    """Queries for each kind of answer: a node, the apex, a PTR, a name outside, ANY; one
    with no EDNS, one with another opcode."""
    asked = (("node0.cluster.lan", "A"), ("cluster.lan", "SOA"), ("cluster.lan", "NS"),
             ("9.1.53.10.in-addr.arpa", "PTR"), ("nobody.cluster.lan", "A"),
             ("c.cluster.lan", "ANY"), ("example.com", "AAAA"))  # fmt: skip
    seeds = [
        dns.message.make_query(name, kind, use_edns=True, payload=1232).to_wire()
        for name, kind in asked
    ]
    seeds.append(dns.message.make_query("node0.cluster.lan", "A").to_wire())
    notify = dns.message.make_query("cluster.lan", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    seeds.append(notify.to_wire())
    return seeds


def dns_one(data: bytes) -> None:
    """One query over UDP and TCP, with and without upstream servers."""
    for upstream in (False, True):
        for tcp in (False, True):
            got = answer(data, ZONE, upstream=upstream, tcp=tcp)
            assert got is None or isinstance(got, Reply | Forward), got
            if isinstance(got, Reply):
                assert len(got.wire) <= (65535 if tcp else 4096), len(got.wire)
                dns.message.from_wire(got.wire)
