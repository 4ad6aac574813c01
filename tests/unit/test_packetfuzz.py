"""The live fuzzer's pure part: valid seeds, reproducible streams, bounded datagrams."""

from __future__ import annotations

import random

from provisioner.boot.dhcp_codec import decode
from provisioner.lab.packetfuzz import MAX_DATAGRAM, PORTS, generate, mutate, seeds


def test_dhcp_seeds_are_valid_packets_and_tftp_seeds_start_with_an_opcode() -> None:
    start = seeds("10.53.0.1")
    for port in (67, 4011):
        for data in start[port]:
            assert decode(data).message_type is not None
    assert {data[:2] for data in start[69]} == {b"\x00\x01", b"\x00\x02", b"\x00\x03",
                                               b"\x00\x04", b"\x00\x05"}  # fmt: skip


def test_the_stream_is_the_same_for_a_seed_and_goes_to_each_port_in_turn() -> None:
    first = list(generate("10.53.0.1", 300, seed=7))
    assert first == list(generate("10.53.0.1", 300, seed=7))
    assert first != list(generate("10.53.0.1", 300, seed=8))
    assert [port for port, _ in first[:6]] == [*PORTS, *PORTS]
    assert all(len(data) <= MAX_DATAGRAM for _, data in first)
    start = {d for ds in seeds("10.53.0.1").values() for d in ds}
    assert sum(data in start for _, data in first) < 30  # nearly all changed


def test_mutate_changes_and_bounds() -> None:
    rng = random.Random(1)
    data = seeds("10.53.0.1")[67][0]
    outs = [mutate(data, rng) for _ in range(500)]
    assert all(len(out) <= MAX_DATAGRAM for out in outs)
    assert len(set(outs)) > 450
