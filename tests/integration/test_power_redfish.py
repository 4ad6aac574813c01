"""The Redfish driver against a real Redfish service: sushy-tools' sushy-emulator.

The emulator runs its fake systems driver (no libvirt), on 127.0.0.1 and a free port,
with HTTP Basic authentication from an htpasswd file (bcrypt), and once with TLS on a
self-signed certificate. Its fake driver applies power changes 1 to 11 seconds after
the request, like real hardware; the tests poll. It keeps each system's
``BootSourceOverrideMode`` (UEFI unless the system's ``boot_mode`` says otherwise) and
shows what a PATCH set; it does not publish the mode's AllowableValues, never refuses a
mode, and always shows ``BootSourceOverrideEnabled`` as ``Continuous`` (it ignores
``Once``): the refusals are tested against a scripted BMC in tests/unit.
scripts/setup installs sushy-tools in its own virtualenv
(/var/cache/provisioner/sushy-venv) to keep Flask and friends out of the appliance's;
$PROVISIONER_SUSHY_EMULATOR may name another sushy-emulator.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner.power import BmcAuthError, BmcUnreachable, PowerError, PowerState, driver_for
from provisioner.power.credentials import Secret
from provisioner.power.redfish import RedfishDriver
from provisioner.power.settings import parse_power_url
from tests.integration.conftest import free_port, stop_process

SUSHY_VENV = Path("/var/cache/provisioner/sushy-venv")
USER, PASSWORD = "admin", "s3cret-pw"
# The emulator's fake systems: name -> (uuid, power state at start)
SYSTEMS = {
    "off0": ("11111111-0000-4000-8000-000000000001", "Off"),
    "off1": ("11111111-0000-4000-8000-000000000002", "Off"),
    "on0": ("11111111-0000-4000-8000-000000000003", "On"),
    "on1": ("11111111-0000-4000-8000-000000000004", "On"),
}
# The boot mode a system starts in where it is not the emulator's default (UEFI).
BOOT_MODES = {"off1": "Legacy", "on1": "Legacy"}


def _emulator() -> Path | None:
    for candidate in (
        os.environ.get("PROVISIONER_SUSHY_EMULATOR"),
        str(SUSHY_VENV / "bin" / "sushy-emulator"),
        shutil.which("sushy-emulator"),
    ):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


@dataclass
class Emulator:
    port: int
    tls: bool

    def url(self, system: str | None = "off0", **options: str) -> str:
        scheme = "redfish" if self.tls else "redfish+http"
        path = f"/redfish/v1/Systems/{SYSTEMS[system][0]}" if system else ""
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"{scheme}://{USER}@127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")

    def driver(
        self,
        system: str | None = "off0",
        password: str = PASSWORD,
        timeout: float = 5,
        firmware: str | None = None,
        **options: str,
    ) -> RedfishDriver:
        settings = parse_power_url(self.url(system, **options))
        driver = driver_for(
            settings, node="rf0", password=Secret(password), timeout=timeout, firmware=firmware
        )
        assert isinstance(driver, RedfishDriver)
        return driver


def _start(tmp_path: Path, *, tls: bool) -> Iterator[Emulator]:
    emulator = _emulator()
    if emulator is None:
        pytest.skip("needs sushy-emulator (scripts/setup installs sushy-tools)")
    python = emulator.parent / "python"
    digest = subprocess.run(
        [str(python), "-c", "import bcrypt,sys; "
         "print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())", PASSWORD],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (tmp_path / "htpasswd").write_text(f"{USER}:{digest}\n")
    port = free_port()
    conf = [
        "SUSHY_EMULATOR_FAKE_DRIVER = True",
        f"SUSHY_EMULATOR_AUTH_FILE = {str(tmp_path / 'htpasswd')!r}",
        "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'",
        f"SUSHY_EMULATOR_LISTEN_PORT = {port}",
        f"SUSHY_EMULATOR_STATE_DIR = {str(tmp_path / 'state')!r}",
        "SUSHY_EMULATOR_FAKE_SYSTEMS = "
        + repr(
            [
                {
                    "uuid": uuid,
                    "name": name,
                    "power_state": state,
                    "external_notifier": False,
                    "nics": [{"mac": f"02:00:00:00:01:0{i}", "ip": f"192.0.2.{i}"}],
                    **({"boot_mode": BOOT_MODES[name]} if name in BOOT_MODES else {}),
                }
                for i, (name, (uuid, state)) in enumerate(SYSTEMS.items())
            ]
        ),
    ]
    if tls:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-keyout", str(tmp_path / "key.pem"),
             "-out", str(tmp_path / "cert.pem")],
            capture_output=True, check=True,
        )  # fmt: skip
        conf += [
            f"SUSHY_EMULATOR_SSL_CERT = {str(tmp_path / 'cert.pem')!r}",
            f"SUSHY_EMULATOR_SSL_KEY = {str(tmp_path / 'key.pem')!r}",
        ]
    (tmp_path / "sushy.conf").write_text("\n".join(conf) + "\n")
    log = open(tmp_path / "sushy.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [str(emulator), "--config", str(tmp_path / "sushy.conf")], stdout=log, stderr=log
    )
    try:
        _wait_up(port, proc, tmp_path / "sushy.log")
        yield Emulator(port, tls)
    finally:
        stop_process(proc)
        log.close()


def _wait_up(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sushy-emulator exited {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"sushy-emulator did not listen:\n{log.read_text()}")


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    yield from _start(tmp_path, tls=False)


@pytest.fixture
def tls_emulator(tmp_path: Path) -> Iterator[Emulator]:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a certificate")
    yield from _start(tmp_path, tls=True)


def _raw_system(emulator: Emulator, system: str) -> dict[str, object]:
    """Ask the emulator directly (not through our driver): the cross-check."""
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    url = f"http://127.0.0.1:{emulator.port}/redfish/v1/Systems/{SYSTEMS[system][0]}"
    req = urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(req, timeout=5) as answer:
        data = json.loads(answer.read())
    assert isinstance(data, dict)
    return data


def _raw_power_state(emulator: Emulator, system: str) -> str:
    return str(_raw_system(emulator, system)["PowerState"])


def _raw_boot(emulator: Emulator, system: str) -> tuple[str, str]:
    """(BootSourceOverrideTarget, BootSourceOverrideMode) as the emulator shows them."""
    boot = _raw_system(emulator, system)["Boot"]
    assert isinstance(boot, dict)
    return str(boot["BootSourceOverrideTarget"]), str(boot["BootSourceOverrideMode"])


def test_status_on_off_cycle(emulator: Emulator) -> None:
    """Four systems at once, so that the emulator's 1-11 s delays overlap."""
    drivers = {name: emulator.driver(name) for name in SYSTEMS}
    assert drivers["off0"].status() is PowerState.OFF
    assert drivers["on0"].status() is PowerState.ON
    drivers["off0"].on()
    drivers["on0"].off()
    drivers["on1"].cycle()  # on: ForceRestart, off at once and on again a little later
    assert drivers["on1"].status() is PowerState.OFF
    drivers["off1"].cycle()  # off: a power-cycle powers it on
    expected = {"off0": "On", "on0": "Off", "on1": "On", "off1": "On"}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        seen = {name: drivers[name].status() for name in SYSTEMS}
        if all(seen[n].value == want.lower() for n, want in expected.items()):
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"power states {seen}, want {expected}")
    assert {name: _raw_power_state(emulator, name) for name in SYSTEMS} == expected


def test_several_systems_need_a_path_in_the_url(emulator: Emulator) -> None:
    with pytest.raises(PowerError, match=r"the BMC has 4 systems .* put one in the power URL"):
        emulator.driver(system=None).status()


def test_boot_next_network(emulator: Emulator) -> None:
    driver = emulator.driver()
    assert driver.boot_override_target() == "Hdd"
    driver.boot_next_network()
    assert driver.boot_override_target() == "Pxe"


def test_boot_next_network_sets_the_mode_the_firmware_needs(emulator: Emulator) -> None:
    """A UEFI node on a BMC in Legacy mode, a BIOS node on one in UEFI mode: both flip."""
    assert _raw_boot(emulator, "off1") == ("Hdd", "Legacy")
    assert _raw_boot(emulator, "off0") == ("Hdd", "UEFI")
    emulator.driver("off1", firmware="uefi").boot_next_network()
    emulator.driver("off0", firmware="bios").boot_next_network()
    assert _raw_boot(emulator, "off1") == ("Pxe", "UEFI")
    assert _raw_boot(emulator, "off0") == ("Pxe", "Legacy")


def test_boot_mode_in_the_power_url_beats_the_firmware(emulator: Emulator) -> None:
    emulator.driver("on1", firmware="bios", boot_mode="uefi").boot_next_network()
    emulator.driver("on0", firmware="uefi", boot_mode="legacy").boot_next_network()
    assert _raw_boot(emulator, "on1") == ("Pxe", "UEFI")
    assert _raw_boot(emulator, "on0") == ("Pxe", "Legacy")


def test_unknown_firmware_leaves_the_mode_alone(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "provisioner.power.redfish"):
        emulator.driver("off1").boot_next_network()
        emulator.driver("off0", firmware="coreboot").boot_next_network()
    assert _raw_boot(emulator, "off1") == ("Pxe", "Legacy")
    assert _raw_boot(emulator, "off0") == ("Pxe", "UEFI")
    assert caplog.text.count("boot mode left as is") == 2
    assert "no firmware seen yet" in caplog.text
    assert "firmware 'coreboot' is not one we know" in caplog.text


def test_wrong_password_is_one_line(emulator: Emulator) -> None:
    began = time.monotonic()
    with pytest.raises(BmcAuthError) as caught:
        emulator.driver(password="wrong-pw").status()
    assert time.monotonic() - began < 5
    message = str(caught.value)
    assert message == "the BMC refused user 'admin' (HTTP 401): wrong user name or password"
    assert "wrong-pw" not in message and PASSWORD not in message


def test_closed_port_and_silent_bmc_fail_within_the_timeout() -> None:
    settings = parse_power_url(f"redfish+http://{USER}@127.0.0.1:{free_port()}")
    with pytest.raises(BmcUnreachable, match="connection refused"):
        driver_for(settings, node="rf0", password=Secret("x"), timeout=2).status()

    # a BMC that accepts the connection and never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        settings = parse_power_url(f"redfish+http://{USER}@127.0.0.1:{port}")
        began = time.monotonic()
        with pytest.raises(BmcUnreachable, match=r"no answer from 127\.0\.0\.1:\d+ in 2 s"):
            driver_for(settings, node="rf0", password=Secret("x"), timeout=2).status()
        assert time.monotonic() - began < 4


def test_tls_certificate_is_checked_unless_opted_out(tls_emulator: Emulator) -> None:
    with pytest.raises(PowerError, match=r"TLS certificate check failed .*\?verify=no"):
        tls_emulator.driver().status()
    assert tls_emulator.driver(verify="no").status() is PowerState.OFF


def test_cli_runs_nodes_in_parallel_and_reports_each(emulator: Emulator, tmp_path: Path) -> None:
    """`provisioner power status` on three nodes: one good, one wrong password, one dead."""
    from tests.integration.conftest import write_config

    config = tmp_path / "provisioner.toml"
    write_config(
        config, interface="lo", address="127.0.0.1/8", mode="proxy",
        state=tmp_path / "appliance", http_port=free_port(),
    )  # fmt: skip
    creds = tmp_path / "power.toml"
    creds.write_text(
        f'[nodes.good]\npassword = "{PASSWORD}"\n[nodes.badpw]\npassword = "nope"\n'
        f'[nodes.dead]\npassword = "{PASSWORD}"\n'
    )
    creds.chmod(0o600)
    cli = [sys.executable, "-m", "provisioner.cli", "--config", str(config)]
    env = {**os.environ, "PROVISIONER_POWER_CREDENTIALS": str(creds)}
    dead = f"redfish+http://{USER}@127.0.0.1:{free_port()}"
    for name, mac, url in [
        ("good", "02:00:00:00:00:01", emulator.url("off0")),
        ("badpw", "02:00:00:00:00:02", emulator.url("on0")),
        ("dead", "02:00:00:00:00:03", dead),
    ]:
        subprocess.run([*cli, "node", "add", name, "--mac", mac, "--power", url],
                       check=True, env=env, capture_output=True)  # fmt: skip
    done = subprocess.run(
        [*cli, "power", "status", "good", "badpw", "dead", "--timeout", "5"],
        env=env, capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == "good: off\n"
    errors = done.stderr.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("badpw: status failed: the BMC refused user 'admin'")
    assert errors[1].startswith("dead: status failed: connection refused")
    assert "nope" not in done.stdout + done.stderr


def test_cli_boot_network_takes_the_mode_from_the_registry(
    emulator: Emulator, tmp_path: Path
) -> None:
    """`provisioner power boot-network`: each node's firmware, as the DHCP server saw it."""
    from provisioner.registry import Registry
    from tests.integration.conftest import write_config

    config = tmp_path / "provisioner.toml"
    state = tmp_path / "appliance"
    write_config(
        config, interface="lo", address="127.0.0.1/8", mode="proxy",
        state=state, http_port=free_port(),
    )  # fmt: skip
    cli = [sys.executable, "-m", "provisioner.cli", "--config", str(config)]
    env = {
        **os.environ,
        "PROVISIONER_POWER_CREDENTIALS": str(tmp_path / "none.toml"),
        "PROVISIONER_POWER_PASSWORD_UEFI0": PASSWORD,
        "PROVISIONER_POWER_PASSWORD_BIOS0": PASSWORD,
        "PROVISIONER_POWER_PASSWORD_FIXED0": PASSWORD,
    }
    nodes = [  # name, MAC, system, firmware seen at its network boot, power URL options
        ("uefi0", "02:00:00:00:00:21", "off1", "uefi", {}),
        ("bios0", "02:00:00:00:00:22", "off0", "bios", {}),
        ("fixed0", "02:00:00:00:00:23", "on0", "bios", {"boot_mode": "uefi"}),
    ]
    for name, mac, system, _, options in nodes:
        subprocess.run([*cli, "node", "add", name, "--mac", mac, "--power",
                        emulator.url(system, **options)],
                       check=True, env=env, capture_output=True)  # fmt: skip
    registry = Registry(state / "registry.sqlite3")
    try:
        for _, mac, _, firmware, _ in nodes:
            registry.touch_node(mac, firmware=firmware, arch=0 if firmware == "bios" else 7)
    finally:
        registry.close()
    emulator.driver("on0", boot_mode="legacy").boot_next_network()  # was UEFI: now not
    done = subprocess.run(
        [*cli, "power", "boot-network", "uefi0", "bios0", "fixed0", "--timeout", "5"],
        env=env, capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _raw_boot(emulator, "off1") == ("Pxe", "UEFI")
    assert _raw_boot(emulator, "off0") == ("Pxe", "Legacy")
    assert _raw_boot(emulator, "on0") == ("Pxe", "UEFI")


def test_no_session_service_falls_back_to_basic(emulator: Emulator) -> None:
    """sushy-emulator has no SessionService: the driver uses Basic auth and says nothing."""
    url = f"http://127.0.0.1:{emulator.port}/redfish/v1/"
    with urllib.request.urlopen(url, timeout=5) as answer:
        assert b"SessionService" not in answer.read()
    assert emulator.driver().status() in (PowerState.ON, PowerState.OFF)
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{url}Systems", timeout=5)
