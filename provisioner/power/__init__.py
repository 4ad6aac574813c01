"""Power control: one small driver seam, one module per kind of BMC.

A node's power settings are a URL without a password (``redfish://admin@10.0.0.31``,
``ipmi://admin@10.0.0.32``, ``wol://aa:bb:cc:dd:ee:01?interface=eth1``,
``qemu:///var/lib/provisioner/lab/labnode1.qmp``, ``manual:``), parsed by
:mod:`provisioner.power.settings`; the password comes from :mod:`.credentials` (a 0600
file or the environment) and is never stored, printed or returned.

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
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

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


if TYPE_CHECKING:
    from provisioner.power.credentials import Secret
    from provisioner.power.manual import Confirmer
    from provisioner.power.settings import PowerSettings


def driver_for(
    settings: PowerSettings,
    *,
    node: str,
    password: Secret | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    confirm: Confirmer | None = None,
) -> PowerDriver:
    """The driver for a node's power settings (a BMC driver needs its password)."""
    from provisioner.power.settings import DriverKind

    if settings.needs_password and password is None:
        raise CredentialsError(f"{settings.driver.value} needs a password for {node}")
    if settings.driver is DriverKind.IPMI:
        from provisioner.power.ipmi import IpmiDriver

        assert password is not None
        return IpmiDriver(settings, password, timeout=timeout)
    if settings.driver is DriverKind.REDFISH:
        from provisioner.power.redfish import RedfishDriver

        assert password is not None
        return RedfishDriver(settings, password, timeout=timeout)
    if settings.driver is DriverKind.WOL:
        from provisioner.power.wol import WolDriver

        return WolDriver(settings)
    if settings.driver is DriverKind.QEMU:
        from provisioner.power.qemu import QemuDriver

        return QemuDriver(settings, timeout=timeout)
    from provisioner.power.manual import ManualDriver, TerminalConfirmer

    return ManualDriver(node, confirm or TerminalConfirmer(), timeout=timeout)
