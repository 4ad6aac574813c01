"""open_driver: find the node's password (environment, then a file), then make the driver.

The password that was found is checked where it is used: a tiny Redfish BMC on loopback
(stdlib http.server) answers only to the right Basic credentials and records what it
was sent. Files are real 0600 files under tmp_path; the environment is the real one.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from provisioner.power import (
    BmcAuthError,
    CredentialsError,
    PowerSettingsError,
    PowerState,
    open_driver,
)
from provisioner.power.credentials import ENV_FILE, SYSTEM_FILE, env_name, parse_credentials
from provisioner.power.settings import parse_power_url

SYSTEM = "/redfish/v1/Systems/1"


class FakeBmc:
    """A Redfish BMC with one system that is on; Basic auth with one password."""

    def __init__(self, password: str):
        self.password = password
        self.passwords_seen: list[str] = []
        bmc = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/redfish/v1/":  # the service root needs no login
                    self._answer(200, {"RedfishVersion": "1.6.0"})
                    return
                auth = self.headers.get("Authorization", "")
                given = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")[2]
                bmc.passwords_seen.append(given)
                if given != bmc.password:
                    self._answer(401, {})
                elif self.path == SYSTEM:
                    self._answer(200, {"PowerState": "On"})
                else:
                    self._answer(404, {})

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"redfish+http://admin@127.0.0.1:{self.server.server_address[1]}{SYSTEM}"


@pytest.fixture
def bmc() -> Iterator[FakeBmc]:
    fake = FakeBmc("right")
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def no_power_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's environment names no password and no credentials file of its own."""
    for name in ("node0", "node1"):
        monkeypatch.delenv(env_name(name), raising=False)
    monkeypatch.delenv(ENV_FILE, raising=False)


def write_credentials(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_password_from_the_credentials_file(tmp_path: Path, bmc: FakeBmc) -> None:
    creds = write_credentials(
        tmp_path / "power.toml",
        '[nodes.node0]\npassword = "right"\n[default]\npassword = "wrong"\n',
    )
    driver = open_driver(bmc.url, node="node0", credentials=creds, timeout=5)
    assert driver.kind == "redfish"
    assert driver.status() is PowerState.ON
    assert bmc.passwords_seen == ["right"]


def test_the_file_named_by_the_environment_and_a_bmc_entry(
    tmp_path: Path, bmc: FakeBmc, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = write_credentials(
        tmp_path / "elsewhere.toml", '[bmcs."127.0.0.1"]\npassword = "right"\n'
    )
    monkeypatch.setenv(ENV_FILE, str(creds))
    driver = open_driver(parse_power_url(bmc.url), node="node0", state_dir=tmp_path, timeout=5)
    assert driver.status() is PowerState.ON
    assert bmc.passwords_seen == ["right"]


@pytest.mark.skipif(SYSTEM_FILE.exists(), reason=f"{SYSTEM_FILE} would be read first")
def test_the_file_in_the_state_directory(tmp_path: Path, bmc: FakeBmc) -> None:
    write_credentials(tmp_path / "power.toml", '[default]\npassword = "right"\n')
    driver = open_driver(bmc.url, node="node0", state_dir=tmp_path, timeout=5)
    assert driver.status() is PowerState.ON


def test_the_environment_wins_over_the_file(
    tmp_path: Path, bmc: FakeBmc, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = write_credentials(tmp_path / "power.toml", '[nodes.node0]\npassword = "stale"\n')
    monkeypatch.setenv(env_name("node0"), "right")
    driver = open_driver(bmc.url, node="node0", credentials=creds, timeout=5)
    assert driver.status() is PowerState.ON
    assert bmc.passwords_seen == ["right"]


def test_a_store_read_once_serves_many_nodes(bmc: FakeBmc) -> None:
    store = parse_credentials('[nodes.node0]\npassword = "right"\n[default]\npassword = "old"\n')
    assert open_driver(bmc.url, node="node0", credentials=store, timeout=5).status() is (
        PowerState.ON
    )
    with pytest.raises(BmcAuthError):
        open_driver(bmc.url, node="node1", credentials=store, timeout=5).status()
    assert bmc.passwords_seen == ["right", "old"]


def test_no_password_anywhere_names_the_node_the_variable_and_the_file(tmp_path: Path) -> None:
    creds = write_credentials(tmp_path / "power.toml", '[nodes.other]\npassword = "x"\n')
    with pytest.raises(CredentialsError) as caught:
        open_driver("ipmi://admin@10.0.0.32", node="node0", credentials=creds)
    message = str(caught.value)
    assert "no BMC password for node0" in message
    assert "$PROVISIONER_POWER_PASSWORD_NODE0" in message
    assert "[nodes.node0]" in message
    assert str(creds) in message


def test_no_credentials_file_at_all_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_FILE, str(tmp_path / "missing.toml"))
    with pytest.raises(CredentialsError, match=r"no BMC password for node0: .*no credentials file"):
        open_driver("redfish://admin@10.0.0.31", node="node0", state_dir=tmp_path)


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    creds = write_credentials(tmp_path / "power.toml", '[default]\npassword = "x"\n', 0o644)
    with pytest.raises(CredentialsError, match="chmod 600"):
        open_driver("ipmi://admin@10.0.0.32", node="node0", credentials=creds)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("wol://aa:bb:cc:dd:ee:01?interface=eth1", "wol"),
        ("qemu:///run/lab/node0.qmp", "qemu"),
        ("manual:", "manual"),
    ],
)
def test_a_driver_without_a_password_reads_no_file(tmp_path: Path, url: str, kind: str) -> None:
    unreadable = write_credentials(tmp_path / "power.toml", "not toml [", 0o644)
    assert open_driver(url, node="node0", credentials=unreadable).kind == kind


def test_a_bad_url_is_a_settings_error() -> None:
    with pytest.raises(PowerSettingsError, match="unknown driver"):
        open_driver("telnet://bmc", node="node0")
