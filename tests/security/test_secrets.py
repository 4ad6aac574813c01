"""Secrets never leak (issue 20, item 7): the API token, a BMC password and the control
node's SSH private key are nowhere but in the files that hold them. `serve` runs on
loopback at DEBUG; API calls are made with the right and a wrong token; power commands
(status, with --json too) are tried against a BMC that does not answer; then the serve log,
every command's output and every file of the state folder except the secret stores
themselves are searched for each secret."""

from __future__ import annotations

import subprocess

import pytest

from provisioner.registry import Registry
from tests.integration.conftest import Appliance

pytestmark = pytest.mark.root  # the loopback appliance (fast tier)

PASSWORD = "bmc-SECRET-7f3a9c"
MAC = "52:54:00:5e:c4:e7"
# Where each secret is meant to be (and only there), relative to the state folder.
SECRET_STORES = {"api-token", "power.toml", "ssh/id_ed25519", "ssh/id_ed25519.pub"}


def curl(*args: str) -> str:
    done = subprocess.run(["curl", "-s", *args], capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


def test_no_secret_leaves_its_file(loopback_appliance: Appliance) -> None:
    app = loopback_appliance
    app.state.mkdir(parents=True, exist_ok=True)
    (app.state / "power.toml").write_text(f'[nodes.node0]\npassword = "{PASSWORD}"\n')
    (app.state / "power.toml").chmod(0o600)
    registry = Registry(app.state / "registry.sqlite3")
    registry.touch_node(MAC, ip="127.0.0.10")
    registry.set_hostname(MAC, "node0")
    # a BMC that does not answer (nothing listens on port 9 here)
    registry.set_power(MAC, "redfish://admin@127.0.0.1:9/redfish/v1/Systems/1")
    registry.close()
    app.start()
    token = app.api_token
    private = (app.state / "ssh" / "id_ed25519").read_text()
    key_body = "".join(private.strip().splitlines()[1:-1])[:40]  # a piece of the key itself

    outputs = [
        curl(f"{app.base}/api/v1/nodes", "-H", f"Authorization: Bearer {token}"),
        curl(f"{app.base}/api/v1/nodes/{MAC}", "-H", f"Authorization: Bearer {token}"),
        curl(f"{app.base}/api/v1/nodes", "-H", "Authorization: Bearer wrong-token"),
        curl(
            "-X",
            "PATCH",
            f"{app.base}/api/v1/nodes/{MAC}",
            "-H",
            f"Authorization: Bearer {token}",
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"hostname": "node0"}',
        ),
        curl(f"{app.base}/metrics"),
    ]
    for argv in (["power", "status", "node0"], ["power", "status", "node0", "--json"],
                 ["node", "show", "node0", "--json"], ["config", "show", "--json"]):  # fmt: skip
        done = app.cli("--log-level", "DEBUG", *argv)
        outputs.append(done.stdout + done.stderr)
    app.stop()

    places = {"serve log": app.log.read_text(errors="replace")}
    places.update({f"output {i}": out for i, out in enumerate(outputs)})
    for path in sorted(app.state.rglob("*")):
        rel = path.relative_to(app.state).as_posix()
        if path.is_file() and rel not in SECRET_STORES:
            places[rel] = path.read_bytes().decode("utf-8", "replace")
    assert any("node0" in text for text in places.values())  # the search reads real content
    for name, secret in (("API token", token), ("BMC password", PASSWORD), ("SSH key", key_body)):
        leaked = [where for where, text in places.items() if secret in text]
        assert not leaked, f"the {name} is in: {leaked}"
