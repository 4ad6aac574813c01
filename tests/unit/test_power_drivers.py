"""Pure parts of the ipmi, wol and manual drivers, and the driver factory."""

from __future__ import annotations

import io

import pytest

from provisioner.power import (
    BmcAuthError,
    BmcUnreachable,
    CredentialsError,
    PowerError,
    PowerState,
    UnsupportedOperation,
    driver_for,
)
from provisioner.power.bootmode import BootMode
from provisioner.power.credentials import Secret
from provisioner.power.ipmi import (
    IpmiDriver,
    bootdev_command,
    classify,
    ipmitool_argv,
    parse_status,
)
from provisioner.power.manual import ManualDriver, TerminalConfirmer, WatchConfirmer
from provisioner.power.qemu import QemuDriver
from provisioner.power.redfish import RedfishDriver
from provisioner.power.settings import parse_power_url
from provisioner.power.wol import WolDriver, magic_packet

# ---------------------------------------------------------------- ipmi


def test_ipmitool_argv_has_no_password() -> None:
    settings = parse_power_url("ipmi://admin@10.0.0.32:6230?cipher=3")
    argv = ipmitool_argv(settings, ["chassis", "power", "status"], timeout=20)
    assert argv[:4] == ["ipmitool", "-v", "-I", "lanplus"]
    assert argv[argv.index("-H") + 1] == "10.0.0.32"
    assert argv[argv.index("-p") + 1] == "6230"
    assert argv[argv.index("-U") + 1] == "admin"
    assert argv[argv.index("-C") + 1] == "3"
    assert "-E" in argv  # the password comes from $IPMI_PASSWORD
    assert "-P" not in argv
    assert argv[-3:] == ["chassis", "power", "status"]


def test_ipmitool_timeouts_fit_the_budget() -> None:
    settings = parse_power_url("ipmi://admin@10.0.0.32")
    for timeout in (3, 5, 20, 60):
        argv = ipmitool_argv(settings, ["chassis", "power", "status"], timeout=timeout)
        per_try, retries = int(argv[argv.index("-N") + 1]), int(argv[argv.index("-R") + 1])
        assert per_try >= 1
        assert per_try * (retries + 1) <= max(timeout, 2)
    argv = ipmitool_argv(settings, ["x"], timeout=5)
    assert "-C" not in argv  # ipmitool asks the BMC for its best cipher suite
    assert argv[argv.index("-p") + 1] == "623"


# stderr of ipmitool 1.8.19 -v, captured against OpenIPMI's ipmi_sim
@pytest.mark.parametrize(
    ("stderr", "kind", "cause"),
    [
        (
            "Loading IANA PEN Registry...\n> RAKP 2 HMAC is invalid\n"
            "Error: Unable to establish IPMI v2 / RMCP+ session\n",
            BmcAuthError,
            "wrong password",
        ),
        (
            "Loading IANA PEN Registry...\nRAKP 2 message indicates an error : unauthorized name\n"
            "Error: Unable to establish IPMI v2 / RMCP+ session\n",
            BmcAuthError,
            "unknown user name",
        ),
        (
            "Loading IANA PEN Registry...\nGet Auth Capabilities error\n"
            "Error issuing Get Channel Authentication Capabilities request\n"
            "Error: Unable to establish IPMI v2 / RMCP+ session\n",
            BmcUnreachable,
            "no answer from the BMC",
        ),
        (
            "Address lookup for nosuchbmc failed\nCould not open socket!\n",
            BmcUnreachable,
            "does not resolve",
        ),
        (
            "Loading IANA PEN Registry...\nCould not open socket!\n"
            "Error: Unable to establish IPMI v2 / RMCP+ session\n",
            BmcUnreachable,
            "no route",
        ),
        (
            "Error in open session response message : invalid authentication algorithm\n\n"
            "Error: Unable to establish IPMI v2 / RMCP+ session\n",
            PowerError,
            "cipher suite not supported",
        ),
        ("Loading IANA PEN Registry...\nSomething new\n", PowerError, "exited 1: Something new"),
    ],
)
def test_classify_ipmitool_failures(stderr: str, kind: type[PowerError], cause: str) -> None:
    error = classify(stderr, 1)
    assert type(error) is kind
    assert cause in str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    ("mode", "command"),
    [
        (BootMode.UEFI, ["chassis", "bootdev", "pxe", "options=efiboot"]),
        (BootMode.LEGACY, ["chassis", "bootdev", "pxe"]),
        (None, ["chassis", "bootdev", "pxe"]),  # IPMI cannot say "keep the mode"
    ],
)
def test_bootdev_command(mode: BootMode | None, command: list[str]) -> None:
    assert bootdev_command(mode) == command


def test_parse_status() -> None:
    assert parse_status("Chassis Power is on\n") is PowerState.ON
    assert parse_status("Chassis Power is off\n") is PowerState.OFF
    with pytest.raises(PowerError, match="cannot read the power state"):
        parse_status("garbage")


# ---------------------------------------------------------------- wol


def test_magic_packet() -> None:
    packet = magic_packet("aa:bb:cc:dd:ee:01")
    assert len(packet) == 102
    assert packet[:6] == b"\xff" * 6
    assert packet[6:] == bytes.fromhex("aabbccddee01") * 16
    assert magic_packet("AA-BB-CC-DD-EE-01") == packet
    with pytest.raises(ValueError):
        magic_packet("aa:bb")


@pytest.mark.parametrize("op", ["off", "cycle", "status", "boot_next_network"])
def test_wol_refuses_what_it_cannot_do(op: str) -> None:
    driver = WolDriver(parse_power_url("wol://aa:bb:cc:dd:ee:01?interface=eth1"))
    with pytest.raises(UnsupportedOperation, match="Wake-on-LAN cannot"):
        getattr(driver, op)()


# ---------------------------------------------------------------- manual


class Recorder:
    def __init__(self, answer: bool):
        self.answer = answer
        self.asked: list[tuple[str, str]] = []

    def __call__(self, node: str, instruction: str, timeout: float) -> bool:
        self.asked.append((node, instruction))
        return self.answer


def test_manual_asks_the_confirmer() -> None:
    confirm = Recorder(True)
    driver = ManualDriver("node3", confirm, timeout=60)
    driver.on()
    driver.cycle()
    assert confirm.asked[0] == ("node3", "power on node3 now")
    assert "node3" in confirm.asked[1][1]
    assert driver.status() is PowerState.UNKNOWN


def test_manual_unconfirmed_fails_with_the_instruction() -> None:
    with pytest.raises(PowerError, match="not confirmed in 5 s: power off node3"):
        ManualDriver("node3", Recorder(False), timeout=5).off()


def test_terminal_confirmer_refuses_a_pipe() -> None:
    with pytest.raises(UnsupportedOperation, match="needs a person at a terminal"):
        TerminalConfirmer(stdin=io.StringIO("\n"), stderr=io.StringIO())("n", "power on n", 1)


def test_terminal_confirmer_waits_for_enter() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = io.StringIO()
    assert TerminalConfirmer(stdin=Tty("\n"), stderr=err)("n1", "power on n1 now", 1)
    assert err.getvalue() == "n1: power on n1 now, then press Enter\n"
    assert not TerminalConfirmer(stdin=Tty(""), stderr=err)("n1", "power on n1 now", 1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_watch_confirmer_polls_until_seen() -> None:
    clock, said = FakeClock(), list[str]()
    checks = iter([False, False, True])
    confirm = WatchConfirmer(
        lambda: next(checks), said.append, interval=2, clock=clock, sleep=clock.sleep
    )
    ManualDriver("node5", confirm, timeout=60).on()
    assert said == ["node5: power on node5 now"]
    assert clock.now == 4


def test_watch_confirmer_gives_up_at_the_timeout() -> None:
    clock = FakeClock()
    confirm = WatchConfirmer(
        lambda: False, lambda _: None, interval=2, clock=clock, sleep=clock.sleep
    )
    with pytest.raises(PowerError, match="not confirmed in 5 s: power on node5 now"):
        ManualDriver("node5", confirm, timeout=5).on()
    assert clock.now == 5


# ---------------------------------------------------------------- factory


def test_driver_for() -> None:
    pw = Secret("x")
    assert isinstance(driver_for(parse_power_url("ipmi://a@b"), node="n", password=pw), IpmiDriver)
    assert isinstance(
        driver_for(parse_power_url("redfish://a@b"), node="n", password=pw), RedfishDriver
    )
    assert isinstance(driver_for(parse_power_url("wol://aa:bb:cc:dd:ee:01"), node="n"), WolDriver)
    assert isinstance(driver_for(parse_power_url("qemu:///x.qmp"), node="n"), QemuDriver)
    assert isinstance(driver_for(parse_power_url("manual:"), node="n"), ManualDriver)
    with pytest.raises(CredentialsError, match="ipmi needs a password for n"):
        driver_for(parse_power_url("ipmi://a@b"), node="n")


@pytest.mark.parametrize(
    ("url", "firmware", "mode"),
    [
        ("ipmi://a@b", "uefi", BootMode.UEFI),
        ("ipmi://a@b", "bios", BootMode.LEGACY),
        ("ipmi://a@b", None, None),
        ("ipmi://a@b?boot_mode=legacy", "uefi", BootMode.LEGACY),
        ("redfish://a@b", "arm64", BootMode.UEFI),
        ("redfish://a@b?boot_mode=uefi", None, BootMode.UEFI),
        ("redfish://a@b?boot_mode=auto", "bios", BootMode.LEGACY),
    ],
)
def test_driver_for_gives_bmc_drivers_the_boot_mode(
    url: str, firmware: str | None, mode: BootMode | None
) -> None:
    driver = driver_for(parse_power_url(url), node="n7", password=Secret("x"), firmware=firmware)
    assert isinstance(driver, IpmiDriver | RedfishDriver)
    assert driver.boot_mode.mode is mode
    assert driver.node == "n7"
