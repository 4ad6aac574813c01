"""Which kernel lines go on a node's timeline: pure, the clock an input.

Every line is kept in the node's console log (store.py); only a few become ``console``
events in the registry:

- ``boot``: the first lines of a boot. A boot starts when a node is first heard from by
  this process, or when its kernel's sequence number or clock goes back (a new kernel);
  the first case is a boot only if the timeline has none since its last boot script
  (:func:`marked_since_script`: a restarted appliance does not mark a boot twice);
- trouble: :data:`TROUBLE`, first pattern that matches wins (a panic, an Oops, a BUG:,
  a hung task, a lockup or RCU stall, a WARNING, the OOM killer, a call trace). A call
  trace right after another trouble line is that trouble's, not an event of its own.

At most :data:`EVENTS_PER_WINDOW` events per node per :data:`WINDOW` seconds: a kernel
that prints an Oops a second cannot flood the registry. What the budget holds back is
counted, and the next event says how many (``suppressed``).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from provisioner.console.protocol import KernelLine
from provisioner.records import Event, EventKind

EVENTS_PER_WINDOW = 6
WINDOW = 60.0  # seconds
TRACE_FOLD = 30.0  # seconds: a call trace this soon after a trouble event belongs to it
MAX_NODES = 4096  # nodes followed at once (the oldest forgotten first)
CLOCK_SLACK = 1.0  # seconds a kernel clock may seem to go back (reordered datagrams)
SEQ_SLACK = 64  # records a sequence number may seem to go back (the same)

TROUBLE: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("panic", re.compile(r"Kernel panic - not syncing")),
    ("oops", re.compile(r"\bOops\b|general protection fault|BUG: unable to handle")),
    ("hung-task", re.compile(r"INFO: task \S+ blocked for more than|\bhung_task")),
    (
        "lockup",
        re.compile(r"soft lockup|hard LOCKUP|detected stalls on CPUs|self-detected stall"),
    ),
    ("bug", re.compile(r"\bBUG:")),
    ("warning", re.compile(r"^WARNING: (CPU: |at )")),
    ("oom", re.compile(r"Out of memory: Kill(ed)? process")),
    ("call-trace", re.compile(r"^\s*Call [Tt]race:")),
)


def trouble(text: str) -> str | None:
    """The kind of trouble a kernel line reports, or None."""
    for kind, pattern in TROUBLE:
        if pattern.search(text):
            return kind
    return None


def marked_since_script(events: Iterable[Event]) -> bool:
    """Does the timeline have a console ``boot`` event after its last boot script?"""
    marked = False
    for e in events:
        if e.kind is EventKind.SCRIPT:
            marked = False
        elif e.kind is EventKind.CONSOLE and e.detail.get("what") == "boot":
            marked = True
    return marked


@dataclass(frozen=True)
class Notice:
    """A line for the timeline. ``first_sight``: a boot only because this process had
    not heard from the node (the caller asks the timeline, see marked_since_script)."""

    what: str  # "boot" or one of TROUBLE's kinds
    line: KernelLine
    first_sight: bool = False
    suppressed: int = 0  # events the budget held back before this one

    def detail(self) -> dict[str, str | int | float | None]:
        detail: dict[str, str | int | float | None] = {"what": self.what, "line": self.line.text}
        if self.line.kernel_ts is not None:
            detail["kernel_ts"] = self.line.kernel_ts
        if self.suppressed:
            detail["suppressed"] = self.suppressed
        return detail


@dataclass
class _Node:
    seq: int | None = None
    kernel_ts: float | None = None
    window_start: float = 0.0
    spent: int = 0
    held_back: int = 0
    last_trouble: float | None = None


class ConsoleWatch:
    """Fed each node's lines in the order they came; says which are timeline events."""

    def __init__(
        self,
        *,
        events_per_window: int = EVENTS_PER_WINDOW,
        window: float = WINDOW,
        max_nodes: int = MAX_NODES,
    ):
        self.events_per_window = events_per_window
        self.window = window
        self.max_nodes = max_nodes
        self._nodes: OrderedDict[str, _Node] = OrderedDict()

    def feed(self, mac: str, line: KernelLine, now: float) -> tuple[Notice | None, int]:
        """The notice ``line`` gives (None: none, or over the budget) and how many the
        budget held back (0 or 1) by this call."""
        node = self._nodes.get(mac)
        first_sight = node is None
        if node is None:
            node = _Node(window_start=now)
            self._nodes[mac] = node
            while len(self._nodes) > self.max_nodes:
                self._nodes.popitem(last=False)
        self._nodes.move_to_end(mac)
        restarted = _went_back(node, line)
        if line.seq is not None:
            node.seq = line.seq
        if line.kernel_ts is not None:
            node.kernel_ts = line.kernel_ts
        if first_sight or restarted:
            node.last_trouble = None
            return self._spend(node, Notice("boot", line, first_sight and not restarted), now)
        what = trouble(line.text)
        if what is None:
            return None, 0
        folded = node.last_trouble is not None and now - node.last_trouble < TRACE_FOLD
        if what == "call-trace" and folded:
            return None, 0
        node.last_trouble = now
        return self._spend(node, Notice(what, line), now)

    def _spend(self, node: _Node, notice: Notice, now: float) -> tuple[Notice | None, int]:
        if now - node.window_start >= self.window:
            node.window_start, node.spent = now, 0
        if node.spent >= self.events_per_window:
            node.held_back += 1
            return None, 1
        node.spent += 1
        held, node.held_back = node.held_back, 0
        return Notice(notice.what, notice.line, notice.first_sight, held), 0


def _went_back(node: _Node, line: KernelLine) -> bool:
    """A new kernel: its clock went back, or its record numbers restarted (by more than
    a reordered datagram could explain)."""
    clock_back = (
        line.kernel_ts is not None
        and node.kernel_ts is not None
        and line.kernel_ts < node.kernel_ts - CLOCK_SLACK
    )
    if line.seq is not None and node.seq is not None:
        return line.seq < node.seq and (clock_back or node.seq - line.seq > SEQ_SLACK)
    return clock_back
