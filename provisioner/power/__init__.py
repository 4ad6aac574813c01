"""Power control: one small driver seam, one module per kind of BMC.

A node's power settings are a URL without a password (``redfish://admin@10.0.0.31``,
``ipmi://admin@10.0.0.32``, ``wol://aa:bb:cc:dd:ee:01?interface=eth1``,
``qemu:///var/lib/provisioner/lab/labnode1.qmp``, ``manual:``), parsed by
:mod:`provisioner.power.settings`; the password comes from :mod:`.credentials` (a 0600
file or the environment) and is never stored, printed or returned.

::

    base         the PowerDriver seam, PowerState, Operation, the errors (tree there)
    settings     power URL <-> PowerSettings (pure)
    bootmode     which firmware mode a one-time network boot asks for (pure)
    credentials  BMC passwords: environment or a 0600 TOML file
    ipmi, redfish, wol, qemu, manual   one driver each; they import base, never this
    run          one operation on many nodes in parallel, one line per node

This package builds drivers: :func:`open_driver` (find the password, then make the
driver: what every caller wants) and :func:`driver_for` (the factory, password given).
Both take the node's ``firmware`` as seen at its last network boot (``Node.firmware``),
from which a BMC driver picks the mode of a one-time network boot unless the power URL
names one (``boot_mode=``, see :mod:`.bootmode`).
It re-exports :mod:`.base`'s names for callers; nothing inside ``power/`` imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.power.base import (
    DEFAULT_TIMEOUT,
    BmcAuthError,
    BmcUnreachable,
    CredentialsError,
    Operation,
    PowerDriver,
    PowerError,
    PowerSettingsError,
    PowerState,
    UnsupportedOperation,
    perform,
)
from provisioner.power.bootmode import decide_boot_mode
from provisioner.power.credentials import CredentialStore, candidate_files, load_store
from provisioner.power.ipmi import IpmiDriver
from provisioner.power.manual import ManualDriver, TerminalConfirmer
from provisioner.power.qemu import QemuDriver
from provisioner.power.redfish import RedfishDriver
from provisioner.power.settings import DriverKind, PowerSettings, parse_power_url
from provisioner.power.wol import WolDriver

if TYPE_CHECKING:
    from provisioner.power.credentials import Secret
    from provisioner.power.manual import Confirmer

__all__ = [
    "DEFAULT_TIMEOUT",
    "BmcAuthError",
    "BmcUnreachable",
    "CredentialsError",
    "Operation",
    "PowerDriver",
    "PowerError",
    "PowerSettingsError",
    "PowerState",
    "UnsupportedOperation",
    "driver_for",
    "open_driver",
    "perform",
]


def open_driver(
    settings: PowerSettings | str,
    *,
    node: str,
    credentials: CredentialStore | Path | None = None,
    state_dir: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    confirm: Confirmer | None = None,
    firmware: str | None = None,
) -> PowerDriver:
    """The driver for ``node``'s power settings (parsed, or a power URL), password found.

    Only a driver that needs a password (IPMI, Redfish) looks for one, in the order
    :mod:`.credentials` gives: ``$PROVISIONER_POWER_PASSWORD_<NODE>``, then a file.
    ``credentials`` is that file already read (one read for many nodes), the file's path
    (``--credentials``), or None: ``$PROVISIONER_POWER_CREDENTIALS``, else
    /etc/provisioner/power.toml, else ``<state_dir>/power.toml``. Raises
    :class:`PowerSettingsError` for a bad URL and :class:`CredentialsError` naming the
    node, its variable and the file read (or that none was found) when there is no
    password. ``firmware``: the node's (``Node.firmware``), for the network boot's mode.
    """
    if isinstance(settings, str):
        settings = parse_power_url(settings)
    password = None
    if settings.needs_password:
        store = (
            credentials
            if isinstance(credentials, CredentialStore)
            else load_store(candidate_files(credentials, state_dir))
        )
        password = store.password(node, settings.host)
    return driver_for(
        settings,
        node=node,
        password=password,
        timeout=timeout,
        confirm=confirm,
        firmware=firmware,
    )


def driver_for(
    settings: PowerSettings,
    *,
    node: str,
    password: Secret | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    confirm: Confirmer | None = None,
    firmware: str | None = None,
) -> PowerDriver:
    """The driver for a node's power settings (a BMC driver needs its password).

    A driver's module (and what it pulls in: ssl, http.client) is imported only when a
    node uses that driver.
    """
    if settings.needs_password and password is None:
        raise CredentialsError(f"{settings.driver.value} needs a password for {node}")
    boot_mode = decide_boot_mode(settings.boot_mode, firmware)
    if settings.driver is DriverKind.IPMI:
        assert password is not None
        return IpmiDriver(settings, password, timeout=timeout, node=node, boot_mode=boot_mode)
    if settings.driver is DriverKind.REDFISH:
        assert password is not None
        return RedfishDriver(settings, password, timeout=timeout, node=node, boot_mode=boot_mode)
    if settings.driver is DriverKind.WOL:
        return WolDriver(settings)
    if settings.driver is DriverKind.QEMU:
        return QemuDriver(settings, timeout=timeout)

    return ManualDriver(node, confirm or TerminalConfirmer(), timeout=timeout)
