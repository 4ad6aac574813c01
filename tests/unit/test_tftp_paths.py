"""normalize_options() is the TFTP option policy (the path rule, confine(), is pinned in
test_paths.py), and the guard that applies it to each request."""

from __future__ import annotations

import pytest

from provisioner.boot.tftp import MAX_BLKSIZE, TftpStats, _GuardedFactory, normalize_options

OPTIONS = [
    ({}, {}),
    ({"blksize": "1432"}, {"blksize": "1432"}),  # iPXE
    ({"tsize": "0", "blksize": "1468"}, {"tsize": "0", "blksize": "1468"}),  # curl
    ({"BLKSIZE": "1468", "TSize": "0"}, {"blksize": "1468", "tsize": "0"}),
    ({"blksize": "65464"}, {"blksize": "65464"}),
    ({"blksize": "65536"}, {"blksize": str(MAX_BLKSIZE)}),
    ({"blksize": "4"}, {"blksize": "8"}),
    ({"blksize": "000"}, {"blksize": "8"}),
    ({"blksize": "0" * 5000 + "1468"}, {"blksize": "1468"}),
    ({"blksize": "9" * 5000}, {"blksize": str(MAX_BLKSIZE)}),  # int() reads 4,300 digits
    ({"blksize": "abc"}, {}),
    ({"blksize": "-1"}, {}),
    ({"blksize": "²"}, {}),
    ({"tsize": "x"}, {}),
    ({"timeout": "1", "windowsize": "8", "multicast": ""}, {}),
]


@pytest.mark.parametrize(("requested", "accepted"), OPTIONS)
def test_normalize_options(requested: dict[str, str], accepted: dict[str, str]) -> None:
    assert normalize_options(requested) == accepted


class _Service:
    def __init__(self) -> None:
        self.stats = TftpStats()


def test_a_blksize_of_more_digits_than_int_reads_is_clamped_and_counted_once() -> None:
    """Found while writing bench/fuzz_bench.py's TFTP harness: a blksize of 5,000 digits made
    int() raise after the request was counted, so the datagram counted as a request and as
    malformed (the counters must add up to the datagrams received) and was refused."""
    service = _Service()
    rrq = b"\x00\x01ipxe.efi\x00octet\x00blksize\x00" + b"9" * 5000 + b"\x00"
    packet = _GuardedFactory(service, busy=False).parse(rrq)  # type: ignore[arg-type]
    assert packet.options == {"blksize": str(MAX_BLKSIZE)}
    assert (service.stats.requests, service.stats.malformed) == (1, 0)
