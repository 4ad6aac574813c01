"""netconsole's wire formats (provisioner/console/protocol.py), without sockets: the
datagrams are the ones Linux 6.1's netconsole.c writes (plain, extended, fragmented)."""

from __future__ import annotations

import pytest

from provisioner.console.protocol import (
    MAX_DATAGRAM,
    MAX_LINE,
    Decoder,
    Dropped,
    KernelLine,
    clean,
)


def test_an_extended_record_gives_its_level_sequence_and_kernel_time() -> None:
    got = Decoder().feed(
        b"6,0,0,-;Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org)\n"
        b" SUBSYSTEM=cpu\n DEVICE=+cpu:0\n"
    )
    assert got == [
        KernelLine("Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org)", 6, 0, 0.0)
    ]


def test_the_level_is_the_prefix_without_its_facility_and_release_is_skipped() -> None:
    (line,) = Decoder().feed(b"6.1.0-57-amd64,12,731,5212345,c;systemd[1]: hello\n")
    assert (line.level, line.seq, line.kernel_ts, line.text) == (
        4,
        731,
        5.212345,
        "systemd[1]: hello",
    )


def test_fragments_are_put_back_in_any_order() -> None:
    body = b"BUG: a long line " + b"x" * 1500
    half = 900
    first = b"0,42,99000000,-,ncfrag=0/%d;" % len(body) + body[:half]
    second = b"0,42,99000000,-,ncfrag=%d/%d;" % (half, len(body)) + body[half:]
    decoder = Decoder()
    assert decoder.feed(second) == []
    (line,) = decoder.feed(first)
    assert line.seq == 42 and line.level == 0
    assert line.text == clean(body.decode())
    assert len(line.text) == MAX_LINE  # kept to a line's worth


def test_unfinished_fragments_are_bounded() -> None:
    decoder = Decoder()
    for seq in range(100):
        assert decoder.feed(b"6,%d,1,-,ncfrag=0/2000;" % seq + b"a" * 900) == []
    assert len(decoder._fragments) <= 8


def test_plain_lines_with_and_without_printk_time() -> None:
    decoder = Decoder()
    assert decoder.feed(b"[    1.234567] virtio_net virtio0 ens3: renamed from eth0\n") == [
        KernelLine("virtio_net virtio0 ens3: renamed from eth0", kernel_ts=1.234567)
    ]
    assert decoder.feed(b"no time here\r\n") == [KernelLine("no time here")]


def test_a_plain_record_cut_in_two_datagrams_is_one_line() -> None:
    decoder = Decoder()
    assert decoder.feed(b"[   10.000001] Kernel panic - not syn") == []
    assert decoder.feed(b"cing: VFS\n[   10.2] next\n") == [
        KernelLine("Kernel panic - not syncing: VFS", kernel_ts=10.000001),
        KernelLine("next", kernel_ts=10.2),
    ]


def test_a_plain_line_without_end_is_kept_once_it_is_long() -> None:
    decoder = Decoder()
    assert decoder.feed(b"y" * 1000) == []
    (line,) = decoder.feed(b"y" * 1000)
    assert line.text == "y" * MAX_LINE


def test_terminal_controls_are_taken_out() -> None:
    (line,) = Decoder().feed(b"\x1b[31mred\x1b[0m\tand\x07 bell\xc2\x9b\n")
    assert line.text == "[31mred[0m and bell"


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"x" * (MAX_DATAGRAM + 1), "oversize"),
        (b"", "empty"),
        (b" \n\t", "empty"),
        (b"abc\x00def\n", "not-text"),
        (b"\xff\xfe\xfd\n", "not-text"),
        (b"6,1,1,-;\xc3\x28\n", "not-text"),
        (b"2048,1,1,-;too high a prefix\n", "bad-header"),
        (b"6,1,1,-,ncfrag=9/5;abc", "bad-fragment"),
        (b"6,1,1,-,ncfrag=0/3;abcdef", "bad-fragment"),
        (b"6,1,1,-,ncfrag=0/999999;abc", "bad-fragment"),
        (b"6,1,1,-,ncfrag=x;abc", "bad-fragment"),
    ],
)
def test_junk_is_dropped_with_its_reason_and_leaves_no_state(datagram: bytes, reason: str) -> None:
    decoder = Decoder()
    decoder.feed(b"[ 1.0] partial")
    with pytest.raises(Dropped) as caught:
        decoder.feed(datagram)
    assert caught.value.reason == reason
    assert decoder.feed(b" line\n") == [KernelLine("partial line", kernel_ts=1.0)]


def test_the_boot_token_on_the_printed_command_line_is_not_kept() -> None:
    (line,) = Decoder().feed(
        b"6,1,0,-;Kernel command line: initrd=initrd provisioner.mac=52:54:00:99:00:01 "
        b"provisioner.token=0CVW_sGJ7SDHmwXjMaZc provisioner.netconsole=6666\n"
    )
    assert line.text == (
        "Kernel command line: initrd=initrd provisioner.mac=52:54:00:99:00:01 "
        "provisioner.token=<hidden> provisioner.netconsole=6666"
    )
