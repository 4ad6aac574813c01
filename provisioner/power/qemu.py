"""QEMU virtual machines through QMP: how the lab's VMs are powered, like real ones.

A VM "off" is a QEMU process that is not running its guest: started with ``-S``
(status ``prelaunch``), stopped (``paused``), or whose guest shut down under
``-no-shutdown`` (``shutdown``). So:

    on      ``cont`` (after a guest shutdown: ``system_reset`` first)
    off     ``stop`` then ``system_reset``: the next ``on`` boots from the firmware
    cycle   ``system_reset`` then ``cont``
    status  ``query-status``: running -> on, anything else -> off

Lab VMs put the NIC first in the boot order, so ``boot_next_network`` has nothing to do.
A missing socket means there is no QEMU process to power on: that is an error, not "off".
:func:`qmp_call` is the one QMP client (handshake, one command, its answer).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Mapping
from pathlib import Path

from provisioner.power.base import BmcUnreachable, PowerError, PowerState
from provisioner.power.settings import PowerSettings

log = logging.getLogger(__name__)

RUNNING = "running"


def qmp_call(
    path: Path,
    command: str,
    arguments: Mapping[str, object] | None = None,
    *,
    timeout: float = 5.0,
) -> dict[str, object]:
    """Run one QMP command on the socket at ``path``; its ``return`` value (a dict).

    Raises BmcUnreachable when nothing listens there and PowerError when QEMU answers
    with an error or something that is not QMP.
    """
    request: dict[str, object] = {"execute": command}
    if arguments:
        request["arguments"] = dict(arguments)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise BmcUnreachable(f"no QEMU listening on {path}: is the VM started?") from exc
        except OSError as exc:
            raise BmcUnreachable(f"cannot connect to QMP socket {path}: {exc}") from exc
        try:
            reader = sock.makefile("r")
            greeting = json.loads(reader.readline())
            if "QMP" not in greeting:
                raise PowerError(f"{path} does not speak QMP")
            for message in ({"execute": "qmp_capabilities"}, request):
                sock.sendall(json.dumps(message).encode() + b"\n")
                while True:  # skip asynchronous events until the answer
                    answer = json.loads(reader.readline())
                    if "return" in answer or "error" in answer:
                        break
                if "error" in answer:
                    desc = answer["error"].get("desc", answer["error"])
                    raise PowerError(f"QMP {message['execute']}: {desc}")
        except TimeoutError as exc:
            raise BmcUnreachable(f"QEMU did not answer {command} in {timeout:.0f} s") from exc
        except (OSError, ValueError) as exc:
            raise PowerError(f"QMP {command} on {path} failed: {exc}") from exc
    result = answer.get("return")
    return result if isinstance(result, dict) else {}


class QemuDriver:
    kind = "qemu"

    def __init__(self, settings: PowerSettings, *, timeout: float):
        self.path = Path(str(settings.path))
        self.timeout = timeout

    def _qmp(self, command: str) -> dict[str, object]:
        log.debug("qmp socket=%s %s", self.path, command)
        return qmp_call(self.path, command, timeout=self.timeout)

    def run_status(self) -> str:
        """QEMU's own word: running, paused, prelaunch, shutdown, ..."""
        return str(self._qmp("query-status").get("status"))

    def status(self) -> PowerState:
        return PowerState.ON if self.run_status() == RUNNING else PowerState.OFF

    def on(self) -> None:
        status = self.run_status()
        if status == RUNNING:
            return
        if status in ("shutdown", "guest-panicked", "internal-error"):
            self._qmp("system_reset")
        self._qmp("cont")

    def off(self) -> None:
        if self.run_status() == RUNNING:
            self._qmp("stop")
        self._qmp("system_reset")

    def cycle(self) -> None:
        self._qmp("system_reset")
        if self.run_status() != RUNNING:
            self._qmp("cont")

    def boot_next_network(self) -> None:
        """Nothing to do: lab VMs boot from the network first (bootindex=1 on the NIC)."""
