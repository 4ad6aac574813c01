"""The ``manual`` driver: a person presses the power button; we say which, and wait.

For boards with no BMC and no Wake-on-LAN. Each operation hands an instruction to a
:class:`Confirmer` and waits for it to say the step happened. The confirmer is the
pluggable part: :class:`TerminalConfirmer` prints the instruction and waits for Enter;
:class:`WatchConfirmer` announces it and polls a check instead, which is how
``enroll --wait`` can wait for the node's first DHCP request in the registry. A
confirmer that gives up (``False``) makes the operation fail with the instruction in
the message, so the user knows what was not done.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol, TextIO

from provisioner.power.base import PowerError, PowerState, UnsupportedOperation


class Confirmer(Protocol):
    def __call__(self, node: str, instruction: str, timeout: float) -> bool:
        """Show ``instruction`` for ``node``; True once done, False if not in ``timeout``."""
        ...


_TERMINAL_LOCK = threading.Lock()  # parallel nodes ask one at a time


class TerminalConfirmer:
    """Print the instruction and wait for Enter on a terminal (never on a pipe)."""

    def __init__(self, stdin: TextIO | None = None, stderr: TextIO | None = None):
        self.stdin = stdin or sys.stdin
        self.stderr = stderr or sys.stderr

    def __call__(self, node: str, instruction: str, timeout: float) -> bool:
        if not self.stdin.isatty():
            raise UnsupportedOperation(
                f"manual power needs a person at a terminal: {instruction}, then re-run"
            )
        with _TERMINAL_LOCK:
            print(f"{node}: {instruction}, then press Enter", file=self.stderr, flush=True)
            return bool(self.stdin.readline())


class WatchConfirmer:
    """Announce the instruction, then poll ``seen()`` until it is true or time runs out.

    ``seen`` is the caller's evidence that the step happened (for enrollment: a DHCP
    request from the node's MAC recorded after the instruction was given).
    """

    def __init__(
        self,
        seen: Callable[[], bool],
        announce: Callable[[str], None],
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.seen = seen
        self.announce = announce
        self.interval = interval
        self.clock = clock
        self.sleep = sleep

    def __call__(self, node: str, instruction: str, timeout: float) -> bool:
        self.announce(f"{node}: {instruction}")
        deadline = self.clock() + timeout
        while True:
            if self.seen():
                return True
            if self.clock() >= deadline:
                return False
            self.sleep(min(self.interval, max(0.0, deadline - self.clock())))


class ManualDriver:
    kind = "manual"

    def __init__(self, node: str, confirm: Confirmer, *, timeout: float):
        self.node = node
        self.confirm = confirm
        self.timeout = timeout

    def _ask(self, instruction: str) -> None:
        if not self.confirm(self.node, instruction, self.timeout):
            raise PowerError(f"not confirmed in {self.timeout:.0f} s: {instruction}")

    def on(self) -> None:
        self._ask(f"power on {self.node} now")

    def off(self) -> None:
        self._ask(f"power off {self.node} now (hold the power button)")

    def cycle(self) -> None:
        self._ask(f"power {self.node} off and on again (or press reset) now")

    def status(self) -> PowerState:
        return PowerState.UNKNOWN  # nobody to ask; not an error for a list of nodes

    def boot_next_network(self) -> None:
        self._ask(
            f"on {self.node}, choose network (PXE) boot in the firmware's boot menu (F12/F11)"
        )
