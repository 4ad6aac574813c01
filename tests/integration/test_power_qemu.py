"""The qemu driver against a real QEMU: started paused (-S), driven over its QMP socket.

QEMU runs under TCG with no disk, no NIC and no display (its firmware finds nothing to
boot, which is all the power states need); the test ends it by PID.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.power import BmcUnreachable, PowerState, driver_for
from provisioner.power.qemu import QemuDriver, qmp_call
from provisioner.power.settings import parse_power_url
from tests.integration.conftest import free_port, need, stop_process, write_config

pytestmark = pytest.mark.qemu


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[Path]:
    need("qemu-system-x86_64")
    sock = tmp_path / "vm0.qmp"
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "tcg", "-S", "-display", "none", "-nodefaults",
         "-no-shutdown", "-m", "64", "-qmp", f"unix:{sock},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                assert proc.stderr is not None
                raise AssertionError(f"QEMU did not start: {proc.stderr.read().decode()}")
            time.sleep(0.05)
        yield sock
    finally:
        stop_process(proc)
        if proc.stderr is not None:
            proc.stderr.close()


def _driver(sock: Path) -> QemuDriver:
    driver = driver_for(parse_power_url(f"qemu://{sock}"), node="vm0", timeout=5)
    assert isinstance(driver, QemuDriver)
    return driver


def test_prelaunch_on_off_cycle(vm: Path) -> None:
    driver = _driver(vm)
    assert driver.run_status() == "prelaunch"  # started with -S: created powered off
    assert driver.status() is PowerState.OFF
    driver.on()
    assert driver.run_status() == "running"
    assert driver.status() is PowerState.ON
    driver.off()  # stop + system_reset: QEMU 7.2 says prelaunch again (older: paused)
    assert driver.run_status() in ("prelaunch", "paused")
    assert driver.status() is PowerState.OFF
    time.sleep(0.3)
    assert driver.status() is PowerState.OFF  # the reset did not start it again
    driver.cycle()  # off: reset and run
    assert driver.status() is PowerState.ON
    driver.cycle()  # on: reset, keeps running
    assert driver.status() is PowerState.ON
    driver.boot_next_network()  # nothing to do: the lab's NIC boots first


def test_cli_powers_a_vm_on_and_reads_it(vm: Path, tmp_path: Path) -> None:
    config = tmp_path / "provisioner.toml"
    write_config(
        config, interface="lo", address="127.0.0.1/8", mode="proxy",
        state=tmp_path / "state", http_port=free_port(),
    )  # fmt: skip
    cli = [sys.executable, "-m", "provisioner.cli", "--config", str(config)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, check=False)

    assert run("node", "add", "labnode1", "--mac", "52:54:00:00:00:01", "--power",
               f"qemu://{vm}").returncode == 0  # fmt: skip
    assert run("power", "status", "labnode1").stdout == "labnode1: off\n"
    assert run("power", "on", "labnode1").stdout == f"labnode1: on done (qemu {vm})\n"
    done = run("power", "status", "labnode1", "--json")
    assert json.loads(done.stdout)[0]["state"] == "on"
    assert qmp_call(vm, "query-status")["status"] == "running"  # the cross-check


def test_no_qemu_on_the_socket(tmp_path: Path) -> None:
    with pytest.raises(BmcUnreachable, match=r"no QEMU listening on .*: is the VM started\?"):
        _driver(tmp_path / "gone.qmp").status()
