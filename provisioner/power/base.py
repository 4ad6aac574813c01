"""What every power driver shares: the seam, its typed state, its operations, its errors.

Every driver does the same five things, or says clearly that it cannot::

    on()                 power the node on (no-op if already on)
    off()                hard power off (no-op if already off)
    cycle()              make the node boot now: power-cycle if on, power on if off
    status()             PowerState.ON | OFF (| UNKNOWN where the BMC will not say)
    boot_next_network()  the next boot (once) is from the network (PXE)

Errors (children of :class:`~provisioner.errors.ProvisionerError`)::

    PowerError                  a power operation failed; str() is one line: the cause
    ├── UnsupportedOperation    this driver cannot do that (WoL: off, status, cycle)
    ├── PowerSettingsError      a power URL that does not parse (or carries a password)
    ├── CredentialsError        no password, or a credentials file others can read
    ├── BmcUnreachable          no answer in time: wrong address, route or port
    └── BmcAuthError            the BMC refused the user name or password

Third-party and OS errors (subprocess, socket, ssl, urllib) are translated at each
driver's edge with ``raise PowerError(...) from exc``.

The driver modules (``ipmi``, ``redfish``, ``wol``, ``qemu``, ``manual``) and the
helpers beside them import from here, never from the package: :mod:`provisioner.power`
builds drivers (``driver_for``, ``open_driver``) and re-exports these names for callers.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from provisioner.errors import ProvisionerError

DEFAULT_TIMEOUT = 20.0  # seconds one operation on one node may take, end to end


class PowerError(ProvisionerError):
    """A power operation failed; the message is one line naming the cause."""


class UnsupportedOperation(PowerError):
    """The driver cannot do this operation (Wake-on-LAN cannot power off, ...)."""


class PowerSettingsError(PowerError):
    """A power URL that does not parse, names an unknown driver or holds a password."""


class CredentialsError(PowerError):
    """No password for a node, or a credentials file that group or others can read."""


class BmcUnreachable(PowerError):
    """The BMC did not answer in time (wrong address, no route, port closed)."""


class BmcAuthError(PowerError):
    """The BMC refused the user name or the password."""


class PowerState(StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class Operation(StrEnum):
    ON = "on"
    OFF = "off"
    CYCLE = "cycle"
    STATUS = "status"
    BOOT_NEXT_NETWORK = "boot-next-network"


class PowerDriver(Protocol):
    """What every power driver does (or refuses with :class:`UnsupportedOperation`)."""

    kind: str

    def on(self) -> None: ...

    def off(self) -> None: ...

    def cycle(self) -> None: ...

    def status(self) -> PowerState: ...

    def boot_next_network(self) -> None: ...


def perform(driver: PowerDriver, op: Operation) -> PowerState | None:
    """Run one operation; ``status`` returns the state, the others return None."""
    if op is Operation.STATUS:
        return driver.status()
    if op is Operation.ON:
        driver.on()
    elif op is Operation.OFF:
        driver.off()
    elif op is Operation.CYCLE:
        driver.cycle()
    else:
        driver.boot_next_network()
    return None
