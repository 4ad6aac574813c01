"""The IPMI driver against a real IPMI 2.0 BMC simulator: OpenIPMI's ``ipmi_sim``.

ipmi_sim (Debian's ``openipmi``) serves RMCP+ on 127.0.0.1 and a free UDP port; its
chassis is a small shell script that keeps the power state and the boot device in
files, so each test reads what the "hardware" was told. Every result is cross-checked
with a separate ``ipmitool`` call. ipmi_sim offers only cipher suite 3, so most URLs say
``?cipher=3`` (without it ipmitool first asks the BMC which suites it has: 3 s more).

ipmi_sim (OpenIPMI 2.0.33) keeps only the boot device of the boot flags (parameter 5):
its Set System Boot Options handler reads the device selector and drops the first data
byte (valid, persistent, EFI), and ``chassis bootparam get 5`` is rebuilt from the device
alone, always "Boot Flag Invalid" and "BIOS PC Compatible (legacy) boot". So the EFI bit
of a UEFI node's request is checked as it left for the BMC: ipmitool's own ``-v -v``
trace of the request's data, next to what ipmi_sim did record (the device: pxe).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner.power import BmcAuthError, BmcUnreachable, PowerState, driver_for, ipmi
from provisioner.power.credentials import Secret
from provisioner.power.ipmi import IpmiDriver
from provisioner.power.settings import parse_power_url
from tests.integration.conftest import free_port, need, stop_process, write_config

USER, PASSWORD = "admin", "s3cret-pw"

CHASSIS = """#!/bin/sh
# ipmi_sim's chassis control: MC get PARM... | MC set PARM VALUE...
dir=$(dirname "$0")
echo "$*" >> "$dir/calls"
shift
op=$1; shift
if [ "$op" = get ]; then
  for p in "$@"; do
    case $p in
      power) echo "power:$(cat "$dir/power" 2>/dev/null || echo 0)";;
      boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)";;
    esac
  done
else
  while [ $# -gt 1 ]; do
    case $1 in
      power) echo "$2" > "$dir/power";;
      boot) echo "$2" > "$dir/boot";;
    esac
    shift 2
  done
fi
"""

LAN_CONF = """name "{name}"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{chassis} 0x20"
  user 2 true "{user}" "{password}" admin 10 none md2 md5 straight
"""

EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
mc_enable 0x20
"""


@dataclass
class Sim:
    port: int
    dir: Path

    def url(self, cipher: str | None = "3", user: str = USER) -> str:
        return f"ipmi://{user}@127.0.0.1:{self.port}" + (f"?cipher={cipher}" if cipher else "")

    def driver(
        self,
        password: str = PASSWORD,
        timeout: float = 5,
        cipher: str | None = "3",
        user: str = USER,
        firmware: str | None = None,
        boot_mode: str | None = None,
    ) -> IpmiDriver:
        url = self.url(cipher, user) + (f"&boot_mode={boot_mode}" if boot_mode else "")
        settings = parse_power_url(url)
        driver = driver_for(
            settings, node="bmc0", password=Secret(password), timeout=timeout, firmware=firmware
        )
        assert isinstance(driver, IpmiDriver)
        return driver

    @property
    def power(self) -> str:
        path = self.dir / "power"
        return path.read_text().strip() if path.exists() else "0"

    @property
    def boot(self) -> str:
        path = self.dir / "boot"
        return path.read_text().strip() if path.exists() else "default"

    @property
    def calls(self) -> list[str]:
        path = self.dir / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def ipmitool(self, *command: str) -> str:
        """The cross-check: ipmitool run directly, not through the driver."""
        done = subprocess.run(
            ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(self.port),
             "-U", USER, "-E", *command],
            env={**os.environ, "IPMI_PASSWORD": PASSWORD},
            capture_output=True, text=True, timeout=15, check=True,
        )  # fmt: skip
        return done.stdout


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    need("ipmi_sim", "ipmitool")
    chassis = tmp_path / "chassis.sh"
    chassis.write_text(CHASSIS)
    chassis.chmod(0o755)
    port = free_port(socket.SOCK_DGRAM)
    (tmp_path / "lan.conf").write_text(
        LAN_CONF.format(name=f"pv{port}", port=port, chassis=chassis, user=USER, password=PASSWORD)
    )
    (tmp_path / "sim.emu").write_text(EMU)
    (tmp_path / "state").mkdir()
    log = open(tmp_path / "ipmi_sim.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        ["ipmi_sim", "-n", "-p", "-c", str(tmp_path / "lan.conf"), "-f",
         str(tmp_path / "sim.emu"), "-s", str(tmp_path / "state")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )  # fmt: skip
    sim = Sim(port, tmp_path)
    try:
        deadline = time.monotonic() + 10
        while True:  # up when it answers a session
            if proc.poll() is not None:
                raise AssertionError(f"ipmi_sim exited:\n{(tmp_path / 'ipmi_sim.log').read_text()}")
            try:
                sim.ipmitool("-N", "1", "-R", "0", "mc", "info")
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield sim
    finally:
        stop_process(proc)
        log.close()


def test_status_on_off_cycle(sim: Sim) -> None:
    driver = sim.driver()
    assert driver.status() is PowerState.OFF
    assert "Chassis Power is off" in sim.ipmitool("chassis", "power", "status")
    driver.on()
    assert sim.power == "1"
    assert driver.status() is PowerState.ON
    assert "Chassis Power is on" in sim.ipmitool("chassis", "power", "status")

    before = len(sim.calls)
    driver.cycle()  # on: a real power cycle, off then on
    deadline = time.monotonic() + 10  # ipmi_sim powers on again after a short delay
    while sim.power != "1" and time.monotonic() < deadline:
        time.sleep(0.1)
    sets = [c for c in sim.calls[before:] if " set power " in c]
    assert sets == ["0x20 set power 0", "0x20 set power 1"]

    driver.off()
    assert sim.power == "0"
    assert "Chassis Power is off" in sim.ipmitool("chassis", "power", "status")
    driver.cycle()  # off: power on
    assert sim.power == "1"


def test_boot_next_network(sim: Sim) -> None:
    sim.driver().boot_next_network()
    assert sim.boot == "pxe"
    assert "Force PXE" in sim.ipmitool("chassis", "bootparam", "get", "5")


# ipmitool -v -v: the request as it leaves, before encryption
_BOOT_FLAGS = re.compile(
    r">>\s+netfn\s+:\s+0x00\s+>>\s+command\s+:\s+0x08\s+"
    r">>\s+data\s+:\s+0x05 (0x[0-9a-f]{2}) (0x[0-9a-f]{2})"
)


@pytest.fixture
def traced(sim: Sim, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The driver runs ipmitool through a wrapper that keeps its -v -v trace."""
    real = shutil.which("ipmitool")
    assert real is not None
    trace = sim.dir / "ipmitool.trace"
    wrapper = sim.dir / "ipmitool"
    wrapper.write_text(f'#!/bin/sh\nexec {real} -v "$@" 2>>{trace}\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(ipmi, "IPMITOOL", str(wrapper))
    return trace


def _boot_flags_sent(trace: Path) -> list[tuple[int, int]]:
    """(flags byte, device byte) of every Set System Boot Options parameter 5 sent."""
    text = trace.read_text() if trace.exists() else ""
    return [(int(a, 16), int(b, 16)) for a, b in _BOOT_FLAGS.findall(text)]


VALID, PERSISTENT, EFI, PXE = 0x80, 0x40, 0x20, 0x04


@pytest.mark.parametrize(
    ("firmware", "boot_mode", "flags"),
    [
        ("uefi", None, VALID | EFI),  # the firmware seen at its network boot
        ("arm64", None, VALID | EFI),
        ("bios", None, VALID),
        ("bios", "uefi", VALID | EFI),  # the power URL's boot_mode wins
        ("uefi", "legacy", VALID),
        (None, None, VALID),  # nothing known: plain bootdev pxe, as before
    ],
)
def test_network_boot_mode_reaches_the_bmc(
    sim: Sim, traced: Path, firmware: str | None, boot_mode: str | None, flags: int
) -> None:
    sim.driver(firmware=firmware, boot_mode=boot_mode).boot_next_network()
    assert _boot_flags_sent(traced) == [(flags, PXE)]  # next boot only: not persistent
    assert sim.boot == "pxe"  # what ipmi_sim keeps of it
    assert " set boot pxe" in sim.calls[-1]
    shown = sim.ipmitool("chassis", "bootparam", "get", "5")
    assert "Boot Device Selector : Force PXE" in shown
    assert "Boot parameter data: 0004000000" in shown  # ipmi_sim drops the flags byte


def test_cipher_suite_negotiated_when_not_given(sim: Sim) -> None:
    assert sim.driver(cipher=None).status() is PowerState.OFF


def test_wrong_password_and_unknown_user_are_one_line(sim: Sim) -> None:
    began = time.monotonic()
    with pytest.raises(BmcAuthError) as caught:
        sim.driver(password="wrong-pw").status()
    assert str(caught.value) == "wrong password"
    with pytest.raises(BmcAuthError, match="unknown user name"):
        sim.driver(user="nobody").status()
    assert time.monotonic() - began < 5
    assert sim.power == "0"


def test_nothing_listening_fails_within_the_timeout() -> None:
    need("ipmitool")
    settings = parse_power_url(f"ipmi://{USER}@127.0.0.1:{free_port(socket.SOCK_DGRAM)}?cipher=3")
    driver = driver_for(settings, node="bmc0", password=Secret(PASSWORD), timeout=3)
    began = time.monotonic()
    with pytest.raises(BmcUnreachable, match="no answer from the BMC"):
        driver.status()
    assert time.monotonic() - began < 4


def test_cli_one_good_bmc_one_bad(sim: Sim, tmp_path: Path) -> None:
    """`power on` on two nodes: the good BMC powers on, the dead one is one line."""
    config = tmp_path / "provisioner.toml"
    write_config(
        config, interface="lo", address="127.0.0.1/8", mode="proxy",
        state=tmp_path / "appliance", http_port=free_port(),
    )  # fmt: skip
    cli = [sys.executable, "-m", "provisioner.cli", "--config", str(config)]
    dead = f"ipmi://{USER}@127.0.0.1:{free_port(socket.SOCK_DGRAM)}?cipher=3"
    env = {
        **os.environ,
        "PROVISIONER_POWER_CREDENTIALS": str(tmp_path / "none.toml"),
        "PROVISIONER_POWER_PASSWORD_GOOD": PASSWORD,
        "PROVISIONER_POWER_PASSWORD_DEAD": PASSWORD,
    }
    for name, mac, url in [("good", "02:00:00:00:00:11", sim.url()),
                           ("dead", "02:00:00:00:00:12", dead)]:  # fmt: skip
        subprocess.run([*cli, "node", "add", name, "--mac", mac, "--power", url],
                       check=True, env=env, capture_output=True)  # fmt: skip
    began = time.monotonic()
    done = subprocess.run(
        [*cli, "power", "on", "dead", "good", "--timeout", "4", "--json"],
        env=env, capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert time.monotonic() - began < 10
    assert done.returncode == 1
    import json

    results = {r["node"]: r for r in json.loads(done.stdout)}
    assert results["good"]["ok"] and sim.power == "1"
    assert results["dead"]["error"] == "no answer from the BMC"
    assert results["dead"]["target"].startswith("127.0.0.1:")
    assert PASSWORD not in done.stdout + done.stderr
