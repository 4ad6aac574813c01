"""Registry files across versions: upgrades in place, newer files refused untouched,
read-only opens that never write.

The fixtures in tests/fixtures/registry are SQL dumps of files the code made before
``PRAGMA user_version`` (their README says how they were made)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.cli import main
from provisioner.config import Mode, render_config
from provisioner.errors import RegistryError, SchemaVersionError
from provisioner.registry import Registry
from provisioner.registry_migrate import migrate, statements
from provisioner.registry_schema import MIGRATIONS, SCHEMA_VERSION, Migration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "registry"
MAC = "52:54:00:aa:00:00"


def load(fixture: str, path: Path) -> Path:
    """A registry file made from a dump, as the old code left it (WAL mode, closed)."""
    with sqlite3.connect(path) as db:
        db.executescript((FIXTURES / fixture).read_text())
        db.execute("PRAGMA journal_mode=WAL")
    db.close()
    return path


def rows(path: Path) -> dict[str, set[tuple[object, ...]]]:
    """Every row of every table of the file (read-only)."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    found = {t: set(db.execute(f"SELECT * FROM {t}")) for t in tables}
    db.close()
    return found


def shape(path: Path) -> dict[str, object]:
    """Tables with their columns, and indexes: what a schema is, comments aside."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    names = db.execute("SELECT type, name, tbl_name FROM sqlite_master ORDER BY name").fetchall()
    found: dict[str, object] = {}
    for kind, name, table in names:
        if kind == "table":
            found[name] = [tuple(c[1:]) for c in db.execute(f"PRAGMA table_info({name})")]
        elif kind == "index":
            found[name] = (table, [c[2] for c in db.execute(f"PRAGMA index_info({name})")])
    db.close()
    return found


def version(path: Path) -> int:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    db.close()
    return found


def untouched(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Each file of the folder: its bytes and mtime (what "nothing written" means)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.fixture
def current(tmp_path: Path) -> Iterator[Path]:
    """A file this code made and closed, with a node and an event."""
    path = tmp_path / "state" / "registry.sqlite3"
    reg = Registry(path)
    reg.touch_node(MAC, ip="10.30.0.100")
    reg.set_hostname(MAC, "node0")
    reg.close()
    yield path


def test_every_step_splits_into_whole_statements() -> None:
    for step in MIGRATIONS:
        parts = statements(step.script)
        assert parts and all(sqlite3.complete_statement(s) for s in parts), step.version
    assert [s.version for s in MIGRATIONS] == sorted({s.version for s in MIGRATIONS})
    assert MIGRATIONS[-1].version == SCHEMA_VERSION
    with pytest.raises(ValueError, match="without its ';'"):
        statements("CREATE TABLE a (x);\nCREATE TABLE b (x)  -- no end")


def test_a_schema_2_file_from_before_user_version_is_upgraded_in_place(tmp_path: Path) -> None:
    path = load("schema2.sql", tmp_path / "registry.sqlite3")
    before = rows(path)
    assert version(path) == 0 and ("schema", "2") in before["meta"]

    reg = Registry(path)
    assert version(path) == SCHEMA_VERSION
    after = rows(path)
    assert after["meta"] == {("schema", str(SCHEMA_VERSION))}
    # Schema 4: profile_images.previous (NULL on old rows), node_images, node_disks (empty).
    grown = {**before, "profile_images": {(*r, None) for r in before["profile_images"]}}
    assert after.pop("node_images") == after.pop("node_disks") == set()
    # Schema 5: the gateway's keys and usage (empty).
    assert after.pop("gateway_keys") == after.pop("gateway_usage") == set()
    assert {t: r for t, r in after.items() if t != "meta"} == {
        t: r for t, r in grown.items() if t != "meta"
    }  # no row lost or changed
    assert "nodes_dhcp_ip" in shape(path)
    # ... and the code reads it all back.
    assert [n.hostname for n in reg.nodes()] == ["node0", "node1", "node2", None]
    inventory = reg.inventory(MAC)
    assert inventory is not None and inventory.ssh_host_keys[0].type == "ssh-ed25519"
    assert json.loads(reg.cluster_spec("c1") or "{}")["workers"] == ["node1"]
    assert reg.power(MAC) == "ipmi://admin@10.0.0.31"
    assert reg.check_boot_token(MAC, "token-0", now=1767000001.0)
    assert reg.pending_inventory("52:54:00:aa:00:01") is not None
    assert reg.node_by_ip("10.30.0.99") is not None  # through the new index
    assert reg.profile_images() == {"qemu-lab": "debian-bookworm@1"}
    assert len(reg.steps(MAC)) == 1 and len(reg.leases()) == 4
    reg.touch_node(MAC)  # and writes
    reg.close()
    assert Registry(path, readonly=True).nodes()[0].mac == MAC


def test_a_schema_1_file_is_upgraded_too(tmp_path: Path) -> None:
    path = load("schema1.sql", tmp_path / "registry.sqlite3")
    before = rows(path)
    reg = Registry(path)
    node = reg.node("old0")
    assert node is not None and node.ip == "10.0.0.5" and node.image is None
    assert reg.inventory_document(node.mac) == '{"v": 1}'
    reg.close()
    after = rows(path)
    assert after["events"] == before["events"] and after["leases"] == before["leases"]
    # version 1's nodes.boot_token stays, unused; nothing else differs from a new file.
    new = tmp_path / "new.sqlite3"
    Registry(new).close()
    old_shape = shape(path)
    nodes = old_shape["nodes"]
    assert isinstance(nodes, list)
    old_shape["nodes"] = [c for c in nodes if c[0] != "boot_token"]
    assert old_shape == shape(new)


def test_an_upgraded_file_has_the_schema_of_a_new_one(tmp_path: Path) -> None:
    old = load("schema2.sql", tmp_path / "old.sqlite3")
    new = tmp_path / "new.sqlite3"
    Registry(old).close()
    Registry(new).close()
    assert shape(old) == shape(new)
    assert version(old) == version(new) == SCHEMA_VERSION


def test_each_step_is_one_transaction(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "r.sqlite3", isolation_level=None)
    steps = [
        Migration(1, "a", "CREATE TABLE a (x);"),
        Migration(2, "b, then a failure", "CREATE TABLE b (x);\nINSERT INTO nowhere VALUES (1);"),
        Migration(3, "c", "CREATE TABLE c (x);"),
    ]
    with pytest.raises(sqlite3.OperationalError, match="nowhere"):
        migrate(db, tmp_path / "r.sqlite3", steps)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert tables == {"a"} and db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert migrate(db, tmp_path / "r.sqlite3", [steps[0], steps[2]]) == [3]
    assert migrate(db, tmp_path / "r.sqlite3", [steps[0], steps[2]]) == []  # nothing to do


@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback-journal"])
def test_a_file_newer_than_this_provisioner_is_refused_and_nothing_written(
    current: Path, wal: bool
) -> None:
    newer = SCHEMA_VERSION + 4
    with sqlite3.connect(current) as db:
        db.execute(f"PRAGMA user_version = {newer}")
        if not wal:  # the header changes if an open sets WAL mode: it must not get that far
            db.execute("PRAGMA journal_mode=DELETE")
    db.close()
    before = untouched(current.parent)
    assert set(before) == {"registry.sqlite3"}
    message = (
        f"{current} has schema version {newer}, this provisioner knows up to"
        f" {SCHEMA_VERSION}: upgrade provisioner"
    )
    for readonly in (False, True):
        with pytest.raises(SchemaVersionError) as refused:
            Registry(current, readonly=readonly)
        assert str(refused.value) == message
        assert (refused.value.found, refused.value.known) == (newer, SCHEMA_VERSION)
    assert untouched(current.parent) == before


def test_a_read_only_open_writes_nothing_even_in_a_read_only_folder(current: Path) -> None:
    before = untouched(current.parent)
    current.chmod(0o400)
    current.parent.chmod(0o500)
    try:
        reg = Registry(current, readonly=True)
        assert [n.hostname for n in reg.nodes()] == ["node0"]
        assert reg.node("node0") is not None and reg.events(MAC) == []
        with pytest.raises(RegistryError, match="read-only"):
            reg.touch_node(MAC)
        reg.close()
    finally:
        current.parent.chmod(0o700)
        current.chmod(0o600)
    assert untouched(current.parent) == before  # same bytes, same mtime, no -wal or -shm


def test_a_read_only_open_beside_a_writer_sees_its_writes(current: Path) -> None:
    writer = Registry(current)
    writer.touch_node("52:54:00:aa:00:05")  # in the -wal file, not yet in the main file
    reader = Registry(current, readonly=True)
    assert len(reader.nodes()) == 2
    reader.close()
    writer.close()


def test_a_read_only_open_of_an_old_file_says_what_to_run(tmp_path: Path) -> None:
    path = load("schema2.sql", tmp_path / "registry.sqlite3")
    before = untouched(tmp_path)
    with pytest.raises(SchemaVersionError, match="run a command that writes, or `provisioner"):
        Registry(path, readonly=True)
    assert untouched(tmp_path) == before


def test_a_read_only_open_of_no_file_is_empty_and_creates_nothing(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "state" / "registry.sqlite3", readonly=True)
    assert reg.nodes() == [] and reg.cluster_names() == []
    assert not (tmp_path / "state").exists()


def _config(tmp_path: Path, state: Path) -> Path:
    config = tmp_path / "provisioner.toml"
    config.write_text(render_config(
        interface="eth0", address="10.30.0.1/24", mode=Mode.FULL,
        dhcp_range="10.30.0.100-10.30.0.120", state_dir=state,
    ))  # fmt: skip
    return config


def test_node_list_reads_without_writing_and_asks_for_an_upgrade(
    tmp_path: Path, current: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, current.parent)
    before = untouched(current.parent)
    assert main(["--config", str(config), "node", "list", "--json"]) == 0
    assert [n["hostname"] for n in json.loads(capsys.readouterr().out)] == ["node0"]
    assert main(["--config", str(config), "node", "show", "node0", "--json"]) == 0
    assert main(["--config", str(config), "cluster", "list", "--json"]) == 0
    capsys.readouterr()
    assert untouched(current.parent) == before

    for file in current.parent.iterdir():
        file.unlink()
    load("schema2.sql", current)
    old = untouched(current.parent)
    assert main(["--config", str(config), "node", "list"]) == 1
    assert "provisioner serve`, to upgrade it" in capsys.readouterr().err
    assert untouched(current.parent) == old
    assert main(["--config", str(config), "node", "enroll", "node0"]) == 0  # writes: upgrades
    assert version(current) == SCHEMA_VERSION
