"""The boot mode of a one-time network boot: the node's setting, else its firmware, else none."""

from __future__ import annotations

import pytest

from provisioner.boot.dhcp_policy import Firmware
from provisioner.discovery.schema import ENUMS
from provisioner.power.bootmode import (
    FIRMWARE_MODES,
    BootMode,
    decide_boot_mode,
    parse_boot_mode,
)

UEFI, LEGACY = BootMode.UEFI, BootMode.LEGACY


@pytest.mark.parametrize(
    ("setting", "firmware", "mode", "why"),
    [
        # the node's setting wins over what its firmware said
        (UEFI, None, UEFI, "boot_mode=uefi in the power settings"),
        (UEFI, "bios", UEFI, "boot_mode=uefi in the power settings"),
        (LEGACY, "uefi", LEGACY, "boot_mode=legacy in the power settings"),
        # auto: the firmware seen at its last network boot
        (None, "uefi", UEFI, "firmware uefi seen"),
        (None, "uefi-http", UEFI, "firmware uefi-http seen"),
        (None, "arm64", UEFI, "firmware arm64 seen"),
        (None, "bios", LEGACY, "firmware bios seen"),
        (None, " UEFI ", UEFI, "firmware"),
        # neither: no mode named, and the reason says why
        (None, None, None, "boot_mode=auto and no firmware seen yet"),
        (None, "coreboot", None, "firmware 'coreboot' is not one we know"),
        (None, "", None, "firmware '' is not one we know"),
    ],
)
def test_decide_boot_mode(
    setting: BootMode | None, firmware: str | None, mode: BootMode | None, why: str
) -> None:
    choice = decide_boot_mode(setting, firmware)
    assert choice.mode is mode
    assert why in choice.why


def test_every_firmware_the_appliance_records_has_a_mode() -> None:
    """Node.firmware comes from the DHCP server (Firmware) or a discovery report (ENUMS)."""
    recorded = {f.value for f in Firmware} | set(ENUMS["Inventory.firmware"])
    assert recorded <= set(FIRMWARE_MODES)
    assert FIRMWARE_MODES["bios"] is LEGACY
    assert {m for f, m in FIRMWARE_MODES.items() if f != "bios"} == {UEFI}


@pytest.mark.parametrize(
    ("text", "mode"),
    [("uefi", UEFI), ("UEFI", UEFI), ("legacy", LEGACY), (" Legacy ", LEGACY), ("auto", None)],
)
def test_parse_boot_mode(text: str, mode: BootMode | None) -> None:
    assert parse_boot_mode(text) is mode


@pytest.mark.parametrize("text", ["bios", "efi", "", "uefi,legacy"])
def test_parse_boot_mode_refuses_other_words(text: str) -> None:
    with pytest.raises(ValueError):
        parse_boot_mode(text)
