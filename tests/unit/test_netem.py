"""Faults on a lab's bridge (lab/netem.py, lab/netem_queue.py): the spec, the command
lines, the NFQUEUE messages and the schedule; no sockets, no namespaces."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from provisioner.cli import main
from provisioner.cli.common import Exit
from provisioner.errors import UsageError
from provisioner.lab import netem_queue as q
from provisioner.lab.netem import (
    Netem,
    parse,
    ports_of,
    queue_argv,
    queue_rules,
    tc_argv,
    tc_clear_argv,
)


@pytest.mark.parametrize(
    ("text", "spec", "words"),
    [
        ("loss 10% delay 50ms", Netem(50, 0, 10), "delay 50ms loss 10%"),
        ("delay 50ms loss 10%", Netem(50, 0, 10), "delay 50ms loss 10%"),
        ("  delay   50ms  ", Netem(50), "delay 50ms"),
        ("delay 50ms 10ms", Netem(50, 10), "delay 50ms 10ms"),
        ("delay 50ms 10ms loss 0.5%", Netem(50, 10, 0.5), "delay 50ms 10ms loss 0.5%"),
        ("delay 1s", Netem(1000), "delay 1000ms"),
        ("delay 500us", Netem(0.5), "delay 0.5ms"),
        ("loss 100%", Netem(loss_pct=100), "loss 100%"),
        ("loss 0%", Netem(), ""),
    ],
)
def test_a_spec_is_parsed_and_said_in_netems_words(text: str, spec: Netem, words: str) -> None:
    assert parse(text) == spec
    assert " ".join(spec.words()) == words
    if words:
        assert parse(words) == spec  # the canonical form reads back


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("loss", "wants a value"),
        ("delay", "wants a value"),
        ("loss 10", "not a percentage"),
        ("loss 101%", "not a percentage"),
        ("loss -1%", "not a percentage"),
        ("loss 10%%", "not a percentage"),
        ("delay 50", "not a time"),
        ("delay -5ms", "not a time"),
        ("delay 50ms 10ms 5ms", "only 'delay"),
        ("delay 5ms 10ms", "more than the delay"),
        ("delay 20s", "is over 10 s"),
        ("loss 10% loss 5%", "given twice"),
        ("delay 5ms delay 6ms", "given twice"),
        ("duplicate 1%", "only 'delay"),
        ("rate 1mbit", "only 'delay"),
        ("loss 10%; rm -rf /", "not a percentage"),
        ("loss 10% $(reboot)", "only 'delay"),
        ("delay 50ms\x00", "not a time"),
        ("delay 50ms\nloss 1%", None),  # whitespace is whitespace: valid
    ],
)
def test_anything_else_is_refused_as_a_usage_error(text: str, why: str | None) -> None:
    if why is None:
        assert parse(text) == Netem(50, 0, 1)
        return
    with pytest.raises(UsageError, match=why.replace("(", r"\(")):
        parse(text)


def test_tc_puts_netem_on_a_port_and_takes_it_off() -> None:
    spec = Netem(50, 0, 10)
    assert tc_argv(spec, "pv1a2b3cc1") == [
        "tc", "qdisc", "replace", "dev", "pv1a2b3cc1", "root", "netem", "delay", "50ms",
        "loss", "10%",
    ]  # fmt: skip
    assert tc_clear_argv("pv1a2b3ct1") == ["tc", "qdisc", "del", "dev", "pv1a2b3ct1", "root"]


def test_the_queue_way_queues_every_bridged_frame_and_passes_them_without_a_reader() -> None:
    added = queue_rules("-A")
    assert [argv[0] for argv in added] == ["iptables", "ip6tables"]
    for argv in added:
        assert argv[1:4] == ["-w", "-A", "FORWARD"]
        assert "--physdev-is-bridged" in argv and "--queue-bypass" in argv
    assert [argv[2] for argv in queue_rules("-D")] == ["-D", "-D"]
    argv = queue_argv(Netem(50, 5, 10))
    assert argv[1:3] == ["-m", "provisioner.lab.netem_queue"]
    assert argv[3:] == ["--queue", "0", "--delay-ms", "50", "--jitter-ms", "5", "--loss", "10"]


def test_the_ports_are_the_bridges_links() -> None:
    links = [{"ifname": "pv1a2b3cv0"}, {"ifname": "pv1a2b3ct1"}, {"ifname": "pv1a2b3cc2"}]
    assert ports_of(links) == ["pv1a2b3cc2", "pv1a2b3ct1", "pv1a2b3cv0"]
    assert ports_of([]) == []


# ------------------------------------------------------------------- NFQUEUE messages


def header(data: bytes) -> tuple[int, int, int]:
    length, kind, flags, _, _ = struct.unpack_from("=IHHII", data)
    return length, kind, flags


def test_the_config_message_binds_the_queue_ids_only() -> None:
    msg = q.config_message(7, maxlen=100)
    length, kind, flags = header(msg)
    assert length == len(msg) and kind == (3 << 8) | 2 and flags == q.NLM_F_REQUEST
    family, version, queue = struct.unpack_from("!BBH", msg, 16)
    assert (family, version, queue) == (0, 0, 7)
    attrs = dict(q._attrs(msg[20:]))
    assert attrs[q.NFQA_CFG_CMD][0] == q.NFQNL_CFG_CMD_BIND
    assert attrs[q.NFQA_CFG_PARAMS] == struct.pack("!IB", 0, q.NFQNL_COPY_META)
    assert attrs[q.NFQA_CFG_QUEUE_MAXLEN] == struct.pack("!I", 100)


def test_a_verdict_names_the_frame_and_what_becomes_of_it() -> None:
    msg = q.verdict_message(0, 0x01020304, q.NF_ACCEPT)
    length, kind, _ = header(msg)
    assert length == len(msg) == 16 + 4 + 4 + 8 and kind == (3 << 8) | 1
    assert msg[-8:] == struct.pack("!II", q.NF_ACCEPT, 0x01020304)


def packet(packet_id: int) -> bytes:
    """A queued frame as the kernel tells it (the header attribute and another)."""
    attrs = q._attr(q.NFQA_PACKET_HDR, struct.pack("!IHB", packet_id, 0x0800, 2))
    attrs += q._attr(11, b"\x00" * 6)  # another attribute: skipped
    body = struct.pack("!BBH", 2, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), 3 << 8, 0, 0, 0) + body


def test_queued_frames_are_read_by_id_several_to_a_read() -> None:
    assert q.packet_ids(packet(1) + packet(2) + packet(0xFFFFFFFF)) == [1, 2, 0xFFFFFFFF]
    assert q.packet_ids(b"") == []
    assert q.packet_ids(packet(5)[:-3]) == []  # cut short: nothing made up
    ack = struct.pack("=IHHII", 36, q.NLMSG_ERROR, 0, 0, 0) + struct.pack("=i", 0) + b"\0" * 16
    assert q.packet_ids(ack + packet(9)) == [9]


def test_an_error_from_the_kernel_is_raised() -> None:
    error = struct.pack("=IHHII", 36, q.NLMSG_ERROR, 0, 0, 0) + struct.pack("=i", -1) + bytes(16)
    with pytest.raises(q.QueueError, match="error 1"):
        q.packet_ids(error)


def test_the_schedule_drops_its_share_and_lets_the_rest_go_in_order() -> None:
    dice = iter([0.05, 0.5, 0.99, 0.5])
    schedule = q.Schedule(0.05, 0.0, 10, lambda: next(dice))
    assert schedule.arrive(1, now=0.0) == q.NF_DROP  # 0.05 * 100 < 10
    assert schedule.arrive(2, now=0.0) is None
    assert schedule.arrive(3, now=0.01) is None
    assert schedule.wait(0.0) == pytest.approx(0.05)
    assert schedule.due(0.049) == []
    assert schedule.due(0.05) == [2]
    assert schedule.due(1.0) == [3]
    assert schedule.wait(1.0) is None
    assert (schedule.dropped, schedule.passed) == (1, 2)


def test_jitter_moves_a_frame_within_its_bounds() -> None:
    schedule = q.Schedule(0.05, 0.01, 0, lambda: 0.0)  # the lowest roll: -jitter
    schedule.arrive(1, now=0.0)
    assert schedule.wait(0.0) == pytest.approx(0.04)


def test_the_cli_refuses_a_bad_spec_before_touching_anything(tmp_path: Path) -> None:
    lab = str(tmp_path / "lab")
    assert main(["lab", "netem", "--dir", lab, "loss", "lots"]) == Exit.USAGE
    assert main(["lab", "netem", "--dir", lab, "loss", "1%", "--clear"]) == Exit.USAGE
    assert main(["lab", "up", "--dir", lab, "--netem", "corrupt 1%"]) == Exit.USAGE
    assert not (tmp_path / "lab").exists()
