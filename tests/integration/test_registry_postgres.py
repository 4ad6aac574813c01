"""`provisioner serve` and the commands on a PostgreSQL registry (issue 23): chosen by
``[registry] url`` in provisioner.toml, with Debian's PostgreSQL started by the test
(tests/pg_server.py). A node asks for its boot script; serve records it in PostgreSQL,
where a command run beside it, the API and the dashboard all find it; no SQLite file is
made."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests import pg_server
from tests.integration.conftest import Appliance

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
