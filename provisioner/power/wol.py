"""Wake-on-LAN: a magic packet, sent as a UDP broadcast on the cluster interface.

The packet (:func:`magic_packet`, pure) is 6 bytes of 0xff then the node's MAC 16
times. It goes to port 9 of the broadcast address, out of the named interface only
(``SO_BINDTODEVICE``, which needs root or CAP_NET_RAW), so a multi-homed appliance does
not wake machines on the wrong network. WoL can only wake: there is no power off, no
status and no boot-device choice, and a power-cycle of a running node is impossible;
those raise :class:`UnsupportedOperation` naming what to do instead.
"""

from __future__ import annotations

import errno
import logging
import socket

from provisioner.power.base import PowerError, PowerState, UnsupportedOperation
from provisioner.power.settings import PowerSettings

log = logging.getLogger(__name__)

MAGIC_PREFIX = b"\xff" * 6
REPEATS = 16
SENDS = 3  # UDP may drop one; three packets cost nothing


def magic_packet(mac: str) -> bytes:
    """The 102-byte magic packet that wakes ``mac`` (aa:bb:cc:dd:ee:ff or aa-bb-...)."""
    digits = mac.replace(":", "").replace("-", "")
    if len(digits) != 12:
        raise ValueError(f"{mac!r} is not a MAC address")
    return MAGIC_PREFIX + bytes.fromhex(digits) * REPEATS


def send_magic(mac: str, interface: str | None, broadcast: str, port: int) -> None:
    packet = magic_packet(mac)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            if interface:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            for _ in range(SENDS):
                sock.sendto(packet, (broadcast, port))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise PowerError(f"no interface {interface} to send the WoL packet on") from exc
            if exc.errno == errno.EPERM:
                raise PowerError(f"binding to {interface} needs root (CAP_NET_RAW)") from exc
            raise PowerError(f"cannot send the WoL packet via {interface}: {exc}") from exc
    log.info("wol mac=%s sent to %s:%d via %s", mac, broadcast, port, interface or "default")


class WolDriver:
    kind = "wol"

    def __init__(self, settings: PowerSettings):
        self.settings = settings

    def on(self) -> None:
        send_magic(
            str(self.settings.mac),
            self.settings.interface,
            self.settings.broadcast,
            self.settings.wol_port,
        )

    def off(self) -> None:
        raise UnsupportedOperation("Wake-on-LAN cannot power a node off: shut it down from its OS")

    def cycle(self) -> None:
        raise UnsupportedOperation(
            "Wake-on-LAN cannot power-cycle: shut the node down, then `provisioner power on`"
        )

    def status(self) -> PowerState:
        raise UnsupportedOperation("Wake-on-LAN cannot read the power state")

    def boot_next_network(self) -> None:
        raise UnsupportedOperation(
            "Wake-on-LAN cannot choose the boot device: put the network first in the firmware"
        )
