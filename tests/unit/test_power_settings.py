"""Power URLs: parsing, the canonical form the registry stores, refusing passwords."""

from __future__ import annotations

import pytest

from provisioner.power import PowerSettingsError
from provisioner.power.bootmode import BootMode
from provisioner.power.settings import DriverKind, PowerSettings, parse_power_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redfish://admin@10.0.0.31",
            PowerSettings(DriverKind.REDFISH, host="10.0.0.31", user="admin"),
        ),
        (
            "redfish://admin@10.0.0.31:8443/redfish/v1/Systems/1?verify=no",
            PowerSettings(
                DriverKind.REDFISH,
                host="10.0.0.31",
                port=8443,
                user="admin",
                path="/redfish/v1/Systems/1",
                verify_tls=False,
            ),
        ),
        (
            "redfish+http://root@127.0.0.1:8000",
            PowerSettings(
                DriverKind.REDFISH, host="127.0.0.1", port=8000, user="root", plain_http=True
            ),
        ),
        ("ipmi://admin@10.0.0.32", PowerSettings(DriverKind.IPMI, host="10.0.0.32", user="admin")),
        (
            "ipmi://admin@10.0.0.32?boot_mode=UEFI&cipher=3",
            PowerSettings(
                DriverKind.IPMI, host="10.0.0.32", user="admin", cipher=3, boot_mode=BootMode.UEFI
            ),
        ),
        (
            "redfish://admin@10.0.0.31?boot_mode=legacy",
            PowerSettings(
                DriverKind.REDFISH, host="10.0.0.31", user="admin", boot_mode=BootMode.LEGACY
            ),
        ),
        (
            "redfish://admin@10.0.0.31?boot_mode=auto",
            PowerSettings(DriverKind.REDFISH, host="10.0.0.31", user="admin"),
        ),
        (
            "ipmi://ADMIN@bmc7.example:6230?cipher=3",
            PowerSettings(DriverKind.IPMI, host="bmc7.example", port=6230, user="ADMIN", cipher=3),
        ),
        (
            "wol://AA:BB:CC:DD:EE:01?interface=eth1",
            PowerSettings(DriverKind.WOL, mac="aa:bb:cc:dd:ee:01", interface="eth1"),
        ),
        (
            "wol://aa-bb-cc-dd-ee-01?broadcast=10.0.0.255&port=7",
            PowerSettings(
                DriverKind.WOL, mac="aa:bb:cc:dd:ee:01", broadcast="10.0.0.255", wol_port=7
            ),
        ),
        (
            "qemu:///var/lib/provisioner/lab/labnode1.qmp",
            PowerSettings(DriverKind.QEMU, path="/var/lib/provisioner/lab/labnode1.qmp"),
        ),
        ("manual:", PowerSettings(DriverKind.MANUAL)),
        ("manual://", PowerSettings(DriverKind.MANUAL)),
    ],
)
def test_parse(url: str, expected: PowerSettings) -> None:
    assert parse_power_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "redfish://admin@10.0.0.31",
        "redfish://admin@10.0.0.31:8443/redfish/v1/Systems/1?verify=no",
        "redfish+http://root@127.0.0.1:8000",
        "ipmi://admin@10.0.0.32",
        "ipmi://admin@10.0.0.32:6230?cipher=17",
        "ipmi://admin@10.0.0.32:6230?cipher=3&boot_mode=uefi",
        "redfish://admin@10.0.0.31/redfish/v1/Systems/1?verify=no&boot_mode=legacy",
        "redfish+http://root@127.0.0.1:8000?boot_mode=uefi",
        "wol://aa:bb:cc:dd:ee:01?interface=eth1",
        "wol://aa:bb:cc:dd:ee:01?interface=eth1&broadcast=10.0.0.255&port=7",
        "qemu:///run/lab/n1.qmp",
        "manual:",
    ],
)
def test_canonical_url_round_trips(url: str) -> None:
    settings = parse_power_url(url)
    assert settings.url == url
    assert parse_power_url(settings.url) == settings


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("bmc.example", "want SCHEME"),
        ("snmp://admin@pdu1", "unknown driver 'snmp'"),
        ("ipmi://admin@", "no BMC host"),
        ("ipmi://admin@bmc:99999", "bad port"),
        ("ipmi://admin@bmc?cipher=42", "cipher must be"),
        ("ipmi://admin@bmc/x", "ipmi takes no path"),
        ("ipmi://admin@bmc?timeout=3", "unknown option timeout"),
        ("redfish://admin@bmc?verify=maybe", "verify must be yes or no"),
        ("redfish://admin@bmc?boot_mode=efi", "boot_mode must be uefi, legacy or auto"),
        ("ipmi://admin@bmc?boot_mode=", "boot_mode must be uefi, legacy or auto"),
        ("wol://aa:bb:cc:dd:ee:01?boot_mode=uefi", "unknown option boot_mode"),
        ("redfish://admin@bmc/redfish/v1/Managers/1", "must be a system"),
        ("wol://aa:bb:cc", "is not a MAC"),
        ("wol://aa:bb:cc:dd:ee:01?interface=eth0;rm", "bad interface name"),
        ("qemu://relative.sock", "must be an absolute path"),
        ("qemu:relative.sock", "want qemu:///"),
        ("manual:now", "manual takes nothing"),
    ],
)
def test_bad_urls_say_why(url: str, says: str) -> None:
    with pytest.raises(PowerSettingsError, match=says.replace("?", r"\?")):
        parse_power_url(url)


@pytest.mark.parametrize(
    "url", ["redfish://admin:hunter2@10.0.0.31", "ipmi://admin:hunter2@10.0.0.32:623"]
)
def test_password_in_url_is_refused_and_not_echoed(url: str) -> None:
    with pytest.raises(PowerSettingsError, match="password in the URL is refused") as caught:
        parse_power_url(url)
    assert "hunter2" not in str(caught.value)


def test_other_errors_mask_a_password_too() -> None:
    with pytest.raises(PowerSettingsError) as caught:
        parse_power_url("snmp://admin:hunter2@pdu1")
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)


def test_targets_for_messages() -> None:
    assert parse_power_url("ipmi://a@10.0.0.32:6230").target == "10.0.0.32:6230"
    assert parse_power_url("redfish://a@bmc1").target == "bmc1"
    assert parse_power_url("wol://aa:bb:cc:dd:ee:01?interface=eth1").target == (
        "aa:bb:cc:dd:ee:01 via eth1"
    )
    assert not parse_power_url("manual:").needs_password
    assert parse_power_url("ipmi://a@b").needs_password
