"""Fuzzing, the short run CI makes (issue 20, item 3): Hypothesis feeds the parsers that
read what the network and users send, and each may only answer or refuse in its own way,
never raise anything else or hang.

- the DHCP codec and policy: random bytes, and valid PXE packets with bytes changed;
- the TFTP request parser (tftpy's, behind our guard): random bytes, and requests mutated;
- DNS answers (dns/zone.py): random bytes, and queries mutated;
- pasted hardware dumps (parse_dump): random text and mixed pastes with lines shuffled.

``FUZZ_EXAMPLES`` (default 300 per test) sets the budget; a long run is
``FUZZ_EXAMPLES=100000 pytest tests/security/test_fuzz.py``.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Network

import dns.message
import pytest
import tftpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP

from provisioner.boot.dhcp_codec import decode
from provisioner.boot.dhcp_policy import DhcpMode, PolicyConfig, decide
from provisioner.boot.leases import LeaseTable
from provisioner.boot.tftp import TftpStats, _GuardedFactory
from provisioner.discovery.dumps import parse_dump
from provisioner.dns.zone import Forward, Reply, answer, build_zone
from provisioner.errors import DhcpDecodeError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)  # fmt: skip


def mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    """``seed`` with a few bytes changed, cut or grown: close enough to pass the first checks."""

    def change(edits: list[tuple[int, int]], cut: int, tail: bytes) -> bytes:
        data = bytearray(seed)
        for at, value in edits:
            data[at % len(data)] = value
        return bytes(data[: max(1, len(data) - cut)]) + tail

    return st.builds(
        change,
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
        st.integers(0, 40),
        st.binary(max_size=40),
    )


PXE_DISCOVER = bytes(
    BOOTP(op=1, chaddr=bytes.fromhex("020000000001") + b"\0" * 10, xid=7, flags=0x8000)
    / DHCP(
        options=[
            ("message-type", "discover"),
            ("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016"),
            (93, b"\x00\x07"),
            "end",
        ]
    )
)
POLICY = PolicyConfig(
    mode=DhcpMode.FULL, server_ip=IPv4Address("10.70.0.1"), http_port=8080, pxe_port=4011,
    subnet=IPv4Network("10.70.0.0/24"), pool_start=IPv4Address("10.70.0.10"),
    pool_end=IPv4Address("10.70.0.20"),
)  # fmt: skip


def dhcp_survives(data: bytes) -> None:
    try:
        packet = decode(data)
    except DhcpDecodeError:
        return  # refused: counted as malformed by the adapter
    decide(packet, POLICY, port=67, leases=LeaseTable(), now=1000.0)


@FUZZ
@given(st.binary(max_size=700))
def test_dhcp_random_bytes(data: bytes) -> None:
    dhcp_survives(data)


@FUZZ
@given(mutated(PXE_DISCOVER))
def test_dhcp_mutated_pxe_discover(data: bytes) -> None:
    dhcp_survives(data)


class _Service:
    stats = TftpStats()


def tftp_survives(data: bytes) -> None:
    guard = _GuardedFactory(_Service(), busy=False)  # type: ignore[arg-type]
    try:
        guard.parse(data)
    except tftpy.TftpException:
        return  # refused: only this session ends


RRQ = b"\x00\x01pxelinux/ipxe.efi\x00octet\x00blksize\x001428\x00tsize\x000\x00"


@FUZZ
@given(st.binary(max_size=600))
def test_tftp_random_bytes(data: bytes) -> None:
    tftp_survives(data)


@FUZZ
@given(mutated(RRQ))
def test_tftp_mutated_request(data: bytes) -> None:
    tftp_survives(data)


ZONE = build_zone("cluster.lan", IPv4Address("10.70.0.1"), IPv4Network("10.70.0.0/24"),
                  [("node0", "10.70.0.10")], [("c", "node0")])  # fmt: skip
QUERY = dns.message.make_query("node0.cluster.lan", "A", use_edns=True, payload=1232).to_wire()


def dns_survives(data: bytes) -> None:
    for upstream in (False, True):
        for tcp in (False, True):
            got = answer(data, ZONE, upstream=upstream, tcp=tcp)
            assert got is None or isinstance(got, (Reply, Forward))
            if isinstance(got, Reply):
                assert len(got.wire) <= (65535 if tcp else 4096)


@FUZZ
@given(st.binary(max_size=600))
def test_dns_random_bytes(data: bytes) -> None:
    dns_survives(data)


@FUZZ
@given(mutated(QUERY))
def test_dns_mutated_query(data: bytes) -> None:
    dns_survives(data)


MIXED = """$ lspci -nn | grep -i nvidia
01:00.0 VGA compatible controller [0300]: NVIDIA Corporation GA102 [10de:2204] (rev a1)
> 02:00.0 3D controller: NVIDIA Corporation Device 20b2 (rev a1)
+-----------------------------------------------------------------------------+
| NVIDIA-SMI 440.64.00    Driver Version: 440.64.00    CUDA Version: 10.2     |
|   0  Tesla V100S-PCI...  On   | 00000000:3B:00.0 Off |                    0 |
| N/A   31C    P0    37W / 250W |      0MiB / 32510MiB |      0%      Default |
[opencl:gpu:2] Intel(R) OpenCL HD Graphics, Intel(R) Graphics [0x5693] 3.0 [22.40]
  *-display
       produit: GA106 [GeForce RTX 3060 Lite Hash Rate] [10DE:2504]
       information bus: pci@0000:07:00.0
Handle 0x0001, DMI type 1, 27 bytes
System Information
\tManufacturer: Dell Inc.
processor\t: 0
model name\t: AMD EPYC 7551P
Content-Transfer-Encoding: quoted-printable
=3D=20&gt;&amp;<pre>
"""


@FUZZ
@given(st.text(max_size=400))
def test_dumps_random_text(text: str) -> None:
    result = parse_dump(text)
    assert result.format is None or result.inventory is not None


@FUZZ
@given(st.permutations(MIXED.splitlines()), st.integers(0, 40))
def test_dumps_shuffled_mixed_paste(lines: list[str], cut: int) -> None:
    text = "\n".join(lines[: len(lines) - cut % max(1, len(lines))])
    parse_dump(text)


@pytest.mark.parametrize("seed", [PXE_DISCOVER, RRQ, QUERY])
def test_the_seeds_are_accepted_unmutated(seed: bytes) -> None:
    """The mutations start from inputs the parsers take (else the fuzzing tests refusals only)."""
    if seed is PXE_DISCOVER:
        assert decide(decode(seed), POLICY, port=67, leases=LeaseTable(), now=1.0).reply is not None
    elif seed is RRQ:
        assert _GuardedFactory(_Service(), busy=False).parse(seed) is not None  # type: ignore[arg-type]
    else:
        assert isinstance(answer(seed, ZONE, upstream=False), Reply)
