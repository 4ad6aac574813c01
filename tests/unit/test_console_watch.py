"""Which kernel lines reach the timeline (provisioner/console/watch.py): pure, clock given."""

from __future__ import annotations

import pytest

from provisioner.console.protocol import KernelLine
from provisioner.console.watch import ConsoleWatch, marked_since_script, trouble
from provisioner.records import Event, EventKind

MAC = "52:54:00:00:00:01"


def line(text: str, seq: int | None = None, ts: float | None = None) -> KernelLine:
    return KernelLine(text, 6, seq, ts)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Kernel panic - not syncing: VFS: Unable to mount root fs", "panic"),
        ("Oops: 0002 [#1] PREEMPT SMP NOPTI", "oops"),
        ("general protection fault, probably for non-canonical address", "oops"),
        ("BUG: unable to handle page fault for address: 0000000000001234", "oops"),
        ("INFO: task kworker/0:1:42 blocked for more than 120 seconds.", "hung-task"),
        ("watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [stress:99]", "lockup"),
        ("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "lockup"),
        ("BUG: kernel NULL pointer dereference, address: 0000000000000000", "bug"),
        ("WARNING: CPU: 0 PID: 1 at drivers/gpu/x.c:12 probe+0x1/0x2", "warning"),
        ("Out of memory: Killed process 812 (llama-server)", "oom"),
        ("Call Trace:", "call-trace"),
        (" <TASK>", None),
        ("virtio_net virtio0 ens3: renamed from eth0", None),
        ("systemd[1]: Started sshd.service", None),
    ],
)
def test_trouble_kinds(text: str, kind: str | None) -> None:
    assert trouble(text) == kind


def test_the_first_line_heard_is_a_boot_then_plain_lines_are_not_events() -> None:
    watch = ConsoleWatch()
    notice, held = watch.feed(MAC, line("Linux version 6.1", 0, 0.0), 100.0)
    assert notice is not None and notice.what == "boot" and notice.first_sight and held == 0
    assert notice.detail() == {"what": "boot", "line": "Linux version 6.1", "kernel_ts": 0.0}
    for seq in range(1, 50):
        assert watch.feed(MAC, line("ordinary", seq, seq / 10), 100.0) == (None, 0)


def test_a_new_kernel_is_a_new_boot_a_reordered_datagram_is_not() -> None:
    watch = ConsoleWatch()
    watch.feed(MAC, line("a", 900, 60.0), 0.0)
    assert watch.feed(MAC, line("late", 899, 59.9), 1.0) == (None, 0)
    notice, _ = watch.feed(MAC, line("Linux version", 0, 0.0), 2.0)
    assert notice is not None and notice.what == "boot" and not notice.first_sight


def test_a_plain_console_restarting_its_clock_is_a_new_boot() -> None:
    watch = ConsoleWatch()
    watch.feed(MAC, line("a", ts=300.0), 0.0)
    notice, _ = watch.feed(MAC, line("Linux version", ts=0.0), 1.0)
    assert notice is not None and notice.what == "boot"


def test_a_call_trace_after_an_oops_is_the_oops_own() -> None:
    watch = ConsoleWatch()
    watch.feed(MAC, line("boot", 0, 0.0), 0.0)
    oops, _ = watch.feed(MAC, line("Oops: 0000 [#1]", 1, 1.0), 10.0)
    assert oops is not None and oops.what == "oops"
    assert watch.feed(MAC, line("Call Trace:", 2, 1.0), 10.1) == (None, 0)
    alone, _ = watch.feed(MAC, line("Call Trace:", 3, 90.0), 100.0)
    assert alone is not None and alone.what == "call-trace"


def test_a_flood_is_held_to_the_budget_and_the_next_event_says_how_many() -> None:
    watch = ConsoleWatch(events_per_window=3, window=60.0)
    watch.feed(MAC, line("boot", 0, 0.0), 0.0)
    kept, held = [], 0
    for i in range(1, 1001):
        notice, h = watch.feed(MAC, line(f"BUG: number {i}", i, float(i)), 1.0 + i / 1000)
        held += h
        if notice is not None:
            kept.append(notice)
    assert len(kept) == 2 and held == 998  # the boot took one of the three
    late, _ = watch.feed(MAC, line("Kernel panic - not syncing: x", 2000, 2000.0), 70.0)
    assert late is not None and late.what == "panic" and late.suppressed == 998
    # Another node has its own budget.
    other, _ = watch.feed("52:54:00:00:00:02", line("Oops: x", 5, 5.0), 2.0)
    assert other is not None


def test_nodes_followed_are_bounded() -> None:
    watch = ConsoleWatch(max_nodes=10)
    for n in range(100):
        watch.feed(f"52:54:00:00:01:{n:02x}", line("x", 0, 0.0), 0.0)
    assert len(watch._nodes) == 10


def test_a_boot_marked_after_the_last_script_is_not_marked_again() -> None:
    script = Event(MAC, 1.0, EventKind.SCRIPT, {"boot": "image"})
    boot = Event(MAC, 2.0, EventKind.CONSOLE, {"what": "boot", "line": "Linux version"})
    oops = Event(MAC, 3.0, EventKind.CONSOLE, {"what": "oops", "line": "Oops"})
    assert not marked_since_script([])
    assert not marked_since_script([script])
    assert marked_since_script([script, boot, oops])
    assert not marked_since_script([script, boot, oops, script])
