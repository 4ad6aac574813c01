"""Which firmware mode a one-time network boot asks the BMC for: UEFI, legacy, or neither.

A UEFI-only board told "boot from the network once" in legacy mode (IPMI's plain
``chassis bootdev pxe``, whose boot flags say "PC compatible") or with no mode at all
(Redfish without ``BootSourceOverrideMode``, on a BMC whose mode is Legacy) does not
boot from the network. So the request names the mode, chosen in this order:

1. the node's power settings: ``boot_mode=uefi|legacy`` in its power URL (``auto``, the
   default, defers to what follows);
2. the firmware seen when the node last network-booted (``Node.firmware``: the DHCP
   server records ``bios``, ``uefi``, ``uefi-http`` or ``arm64`` from option 93);
3. nothing known: no mode is named (Redfish leaves the BMC's mode as it is; IPMI's
   plain request means legacy), and the log says so.

:func:`decide_boot_mode` is pure; the drivers turn its answer into their own words
(Redfish ``"UEFI"``/``"Legacy"``, ipmitool ``options=efiboot``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class BootMode(StrEnum):
    UEFI = "uefi"
    LEGACY = "legacy"


AUTO = "auto"  # the power URL's word for "no mode set here": decide from the firmware

# Node.firmware (boot.dhcp_policy.Firmware's values, and discovery's "bios"/"uefi")
# -> the mode its network boot needs. ARM64 machines boot only through UEFI.
FIRMWARE_MODES: Mapping[str, BootMode] = MappingProxyType(
    {
        "bios": BootMode.LEGACY,
        "uefi": BootMode.UEFI,
        "uefi-http": BootMode.UEFI,
        "arm64": BootMode.UEFI,
    }
)


@dataclass(frozen=True)
class BootModeChoice:
    """The mode to ask for (None: leave the BMC's mode alone) and why, for the log."""

    mode: BootMode | None
    why: str


def parse_boot_mode(text: str) -> BootMode | None:
    """``uefi`` / ``legacy`` / ``auto`` (None); ValueError for anything else."""
    word = text.strip().lower()
    if word == AUTO:
        return None
    return BootMode(word)


def decide_boot_mode(setting: BootMode | None, firmware: str | None) -> BootModeChoice:
    """The mode for a one-time network boot: the node's setting, else its firmware."""
    if setting is not None:
        return BootModeChoice(setting, f"boot_mode={setting.value} in the power settings")
    if firmware is None:
        return BootModeChoice(None, "boot_mode=auto and no firmware seen yet")
    mode = FIRMWARE_MODES.get(firmware.strip().lower())
    if mode is None:
        return BootModeChoice(None, f"boot_mode=auto and firmware {firmware!r} is not one we know")
    return BootModeChoice(mode, f"firmware {firmware} seen when the node network-booted")
