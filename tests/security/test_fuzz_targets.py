"""The fuzz harnesses (fuzz_targets.py) on their seed corpora, in-process, without atheris:
bench/fuzz_bench.py's long run must not find them broken, and the seeds must reach past
the parsers' first refusals (else a run mutates refusals only)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest
import tftpy

from provisioner.boot.dhcp_codec import decode
from provisioner.boot.dhcp_policy import decide
from provisioner.boot.leases import LeaseTable
from provisioner.boot.paths import confine
from provisioner.boot.tftp import _GuardedFactory
from provisioner.dns.zone import Reply, answer
from provisioner.errors import TftpPathError
from tests.security import fuzz_targets as targets


@pytest.fixture(scope="module")
def tftp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return targets.make_tftp_root(tmp_path_factory.mktemp("fuzz"))


def test_every_seed_passes_its_harness(tftp_root: Path) -> None:
    tftp_one = targets.tftp_harness(tftp_root)
    for harness, seeds in (
        (targets.dhcp_one, targets.dhcp_seeds()),
        (tftp_one, targets.tftp_seeds()),
        (targets.dns_one, targets.dns_seeds()),
    ):
        assert len(seeds) >= 9
        for seed in seeds:
            harness(seed)


def test_the_dhcp_seeds_decode_and_are_answered() -> None:
    answered = set()
    for seed in targets.dhcp_seeds():
        packet = decode(seed)
        for policy, port in ((targets.FULL, 67), (targets.FULL, 4011), (targets.PROXY, 67)):
            leases = LeaseTable.from_mapping(targets.LEASES)
            decision = decide(packet, policy, port=port, leases=leases, now=targets.NOW)
            answered.add(decision.reason if decision.reply is None else "reply")
    assert {"reply", "release", "decline", "not-for-us"} <= answered


def test_the_tftp_seeds_are_requests_for_served_and_refused_names(tftp_root: Path) -> None:
    confined = []
    for seed in targets.tftp_seeds():
        service = targets._Service()
        try:
            packet = _GuardedFactory(service, busy=False).parse(seed)  # type: ignore[arg-type]
        except tftpy.TftpException:
            continue  # ACK, DATA, ERROR, OACK: no request
        try:
            confine(tftp_root, unquote(packet.filename.removeprefix("t")))
            confined.append(packet.filename)
        except TftpPathError:
            pass
    assert {"tipxe.efi", "tundionly.kpxe", "tarm64%2Fipxe.efi"} <= set(confined)


def test_the_dns_seeds_are_answered() -> None:
    kinds = {getattr(answer(seed, targets.ZONE, upstream=False), "kind", None)
             for seed in targets.dns_seeds()}  # fmt: skip
    assert {"answered", "nxdomain", "refused", "notimp"} <= kinds
    assert isinstance(answer(targets.dns_seeds()[0], targets.ZONE, upstream=False), Reply)
