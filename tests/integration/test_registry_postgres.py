"""`provisioner serve` and the commands on a PostgreSQL registry (issue 23): chosen by
``[registry] url`` in provisioner.toml, with Debian's PostgreSQL started by the test
(tests/pg_server.py). A node asks for its boot script; serve records it in PostgreSQL,
where a command run beside it, the API and the dashboard all find it; no SQLite file is
made."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from provisioner.config import DEFAULT_HWPROFILES
from tests import pg_server
from tests.integration.conftest import Appliance, loopback

pytestmark = pytest.mark.root  # the loopback appliance and the postgres user

MAC = "52:54:00:77:00:01"
BEHALF = ("-H", "X-Provisioner-On-Behalf: test")


def curl(*args: str) -> str:
    return subprocess.run(["curl", "-s", *args], capture_output=True, text=True, check=False,
                          timeout=60).stdout  # fmt: skip


def test_serve_and_the_commands_share_a_postgresql_registry(
    loopback_appliance: Appliance, postgres_server: str
) -> None:
    app = loopback_appliance
    url = pg_server.fresh_database(postgres_server)
    app.config.write_text(app.config.read_text() + f'[registry]\nurl = "{url}"\n')
    app.start()
    script = curl(*BEHALF, f"{app.base}/boot/{MAC}.ipxe")
    assert script.startswith("#!ipxe"), script

    listed = app.cli("node", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [n["mac"] for n in json.loads(listed.stdout)] == [MAC]
    renamed = app.cli("node", "rename", MAC, "pg0")
    assert renamed.returncode == 0, renamed.stderr

    token = app.api_token
    node = json.loads(curl(f"{app.base}/api/v1/nodes/pg0", "-H", f"Authorization: Bearer {token}"))
    assert node["mac"] == MAC and [e["kind"] for e in node["timeline"]][:1] == ["script"]
    assert "pg0" in curl(f"{app.base}/")  # the dashboard reads it too
    app.stop()
    assert not (app.state / "registry.sqlite3").exists()

    import psycopg

    with psycopg.connect(url) as db:
        row = db.execute("SELECT hostname, state FROM nodes WHERE mac = %s", (MAC,)).fetchone()
        version = db.execute("SELECT version FROM registry_version").fetchone()
    assert row == ("pg0", "new")
    from provisioner.registry import SCHEMA_VERSION

    assert version == (SCHEMA_VERSION,)


def test_a_password_in_the_url_is_refused(loopback_appliance: Appliance) -> None:
    app = loopback_appliance
    app.config.write_text(app.config.read_text()
                          + '[registry]\nurl = "postgresql://prov:s3cret@db/prov"\n')  # fmt: skip
    done = app.cli("node", "list")
    assert done.returncode != 0
    assert "~/.pgpass" in done.stderr and "s3cret" not in done.stderr


def test_a_profile_reload_on_one_serve_reaches_the_other(
    tmp_path: Path, postgres_server: str
) -> None:
    """Two serves on one PostgreSQL registry, one hwprofiles folder (as config management
    would keep on each control node): a reload asked of one through the API is followed
    by the other within seconds (it polls the registry: scale.md)."""
    url = pg_server.fresh_database(postgres_server)
    profiles = tmp_path / "hwprofiles"
    shutil.copytree(DEFAULT_HWPROFILES, profiles)
    apps = [loopback(tmp_path / name) for name in ("one", "two")]
    for app in apps:
        app.config.write_text(app.config.read_text() + f'[registry]\nurl = "{url}"\n'
                              f'[cluster]\nprofiles = "{profiles}"\n')  # fmt: skip
    try:
        for app in apps:
            app.start()
        one, two = apps
        (profiles / "qemu-lab.yaml").unlink()
        answer = curl("-X", "POST", f"{one.base}/api/v1/profiles/reload",
                      "-H", f"Authorization: Bearer {one.api_token}")  # fmt: skip
        assert json.loads(answer)["profiles"] > 0, answer
        deadline = time.monotonic() + 10
        while "another serve reloaded them" not in two.log.read_text():
            assert time.monotonic() < deadline, two.log.read_text()[-2000:]
            time.sleep(0.2)
        assert "another serve reloaded them" not in one.log.read_text()  # no echo back
    finally:
        for app in apps:
            app.stop()
