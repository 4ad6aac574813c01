"""Starvation (issue 20, item 4): 1,100 slow HTTP clients (the issue asks for 500; past
1,024 open descriptors tftpy's select() died: the failure this test found; slowloris: a
request head sent one byte a second, never finished; reopened when closed) and 64
stalled TFTP transfers (the iPXE binary asked for, no block ever ACKed) do not stop a new
node from booting: with all of them held open, the scripted client goes through DHCP,
TFTP, iPXE's DHCP, its script, kernel and initrd. The 2x-its-normal-time figure is the
bench's (bench/reliability_bench.py: rounds on a quiet machine); here both are printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import need, need_root
from tests.integration.reliability import booted, segment, starve_during_boot

pytestmark = [pytest.mark.root, pytest.mark.netns]

HTTP_CLIENTS, TFTP_STALLS = 1100, 64  # past select(2)'s 1,024 descriptors


def test_slow_clients_do_not_starve_a_boot(tmp_path: Path) -> None:
    need_root()
    need("ip", "curl")
    if not Path("/usr/lib/ipxe/undionly.kpxe").is_file():
        pytest.skip("Debian's ipxe package is not installed")
    with segment(tmp_path) as seg:
        report = starve_during_boot(seg, HTTP_CLIENTS, TFTP_STALLS)
    print(report)
    assert report.alive
    assert all(booted(run) for run in report.runs), [r.as_dict() for r in report.runs]
    assert report.load["max_open"] >= HTTP_CLIENTS and report.load["refused"] == 0, report.load
    assert report.load["stalled_requests"] >= TFTP_STALLS
