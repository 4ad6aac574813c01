"""Live mutated packets (issue 20, item 3, the short run): 5,000 mutated DHCP, PXE and
TFTP datagrams (byte mutations of valid packets and scapy fuzz()) sent to ports 67, 4011
and 69 of a running `serve` while the scripted PXE client boots. serve does not crash or
log a traceback, the boot passes every step, and serve's counters account for every
datagram: received per port = sent - what the kernel dropped (RcvbufErrors, InErrors)
+ the booting node's own packets; and every DHCP datagram received ended as a reply, a
drop by reason or a RELEASE/DECLINE. The long run (10^5): bench/reliability_bench.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import need, need_root
from tests.integration.reliability import booted, fuzz_during_boot, segment

pytestmark = [pytest.mark.root, pytest.mark.netns]

PACKETS, RATE = 5000, 1500.0
NODE_PACKETS = 40  # at most, of the booting node's own (DHCP retransmissions included)


def test_mutated_packets_during_a_boot(tmp_path: Path) -> None:
    need_root()
    need("ip", "curl")
    if not Path("/usr/lib/ipxe/undionly.kpxe").is_file():
        pytest.skip("Debian's ipxe package is not installed")
    with segment(tmp_path) as seg:
        report = fuzz_during_boot(seg, PACKETS, RATE)
    print(report)
    assert report.alive and report.tracebacks == 0
    assert booted(report.run), report.run.as_dict()
    assert sum(report.sent.values()) == PACKETS
    for port, sent in report.sent.items():
        got = report.received[port] + report.kernel_drops
        assert sent <= got <= sent + report.kernel_drops + NODE_PACKETS, (port, report)
    assert report.unaccounted["dhcp"] == 0, report.outcomes
    assert report.outcomes.get('provisioner_dhcp_dropped_total{reason="internal-error"}', 0) == 0
    assert report.outcomes.get('provisioner_dhcp_dropped_total{reason="malformed"}', 0) > 0
    assert report.outcomes.get('provisioner_tftp_dropped_total{reason="malformed"}', 0) > 0
