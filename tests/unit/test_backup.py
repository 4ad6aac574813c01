"""`provisioner backup` / `restore`: a populated state folder round-trips into a fresh one
that serves the same nodes with the same token and keys; damaged, changed, hostile or
newer backups are refused and leave the target as it was."""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from provisioner.backup import MANIFEST, BackupError, backup, read_manifest, restore
from provisioner.boot.http import create_app
from provisioner.boot.http_context import AppContext
from provisioner.boot.ipxe import ScriptRenderer
from provisioner.cli import main
from provisioner.clusters import keys
from provisioner.config import Config, Mode, ensure_api_token, parse_config, render_config
from provisioner.discovery.model import Inventory, SshHostKey
from provisioner.discovery.schema import to_json
from provisioner.errors import SchemaVersionError
from provisioner.hostkeys import ensure_host_key, issued_public_key
from provisioner.metrics import Metrics
from provisioner.profiles import Engine
from provisioner.records import Cluster, EventKind, LeaseKind
from provisioner.registry import Registry
from provisioner.registry_schema import SCHEMA_VERSION
from provisioner.sshkeys import ensure_keypair, fingerprint
from provisioner.states import NodeEvent

MACS = ["52:54:00:bb:00:00", "52:54:00:bb:00:01"]
HOST_DIR = MACS[0].replace(":", "")
HOST_KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIGq3b3m0mJ0VXYqg0oH3oQ7gq0n8S3YkQ1m4Y5cZ0rV1"
NODE_IP = "10.40.0.100"
BOOT_TOKEN = "boot-token-of-node0"


def config(state: Path) -> Config:
    return parse_config(render_config(
        interface="eth0", address="10.40.0.1/24", mode=Mode.FULL,
        dhcp_range="10.40.0.100-10.40.0.120", state_dir=state,
    ))  # fmt: skip


@dataclass
class Site:
    cfg: Config
    registry: Registry  # left open, as `serve` holds it: the backup copies a live file
    token: str
    public_key: str


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """A state folder filled through the code's own paths."""
    cfg = config(tmp_path / "state")
    state = cfg.state_dir
    reg = Registry(cfg.registry_path)
    for i, mac in enumerate(MACS):
        ip = f"10.40.0.10{i}"
        reg.touch_node(mac, firmware="uefi", arch=7)
        reg.commit_lease(mac, IPv4Address(ip), time.time() + 3600, LeaseKind.BOUND)
        reg.set_hostname(mac, f"node{i}")
        key = SshHostKey("ssh-ed25519", fingerprint("ssh-ed25519 " + HOST_KEY), HOST_KEY)
        inventory = Inventory(hostname=f"node{i}", firmware="uefi", ssh_host_keys=(key,))
        reg.store_inventory(mac, json.dumps({"inventory": to_json(inventory)}))
        reg.set_profile(mac, "qemu-lab")
        reg.transition(mac, NodeEvent.MATCH, reason="test")
        reg.transition(mac, NodeEvent.ENROLL, reason="test")
        reg.add_event(mac, EventKind.DHCP, {"msg": "request"})
    reg.issue_boot_token(MACS[0], BOOT_TOKEN, asked_by=NODE_IP, bound_to=NODE_IP,
                         expires=time.time() + 3600)  # fmt: skip
    reg.set_power(MACS[0], "ipmi://admin@10.0.0.31")
    cluster = Cluster(
        name="c1", engine=Engine.LLAMA_RPC, model="tiny", head="node0", workers=("node1",)
    )
    reg.save_cluster(cluster.name, cluster.to_json())
    keys.secret(state, "c1", "engine")
    keys.secret(state, "c1", "gateway")
    token = ensure_api_token(state)
    pair = ensure_keypair(state)
    ensure_host_key(state, MACS[0], "node0")  # the node's own host key, issued at its boot
    credentials = state / "power.toml"
    credentials.write_text('[nodes.node0]\npassword = "bmc-secret"\n')
    credentials.chmod(0o600)
    cfg.image_dir.mkdir()
    (cfg.image_dir / "big.squashfs").write_bytes(b"image")  # not part of a backup
    return Site(cfg, reg, token, pair.public_line)


def take(site: Site, dest: Path) -> None:
    backup(site.cfg.state_dir, dest, credentials=site.cfg.state_dir / "power.toml")


def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in folder.rglob("*")}


def test_a_restored_folder_serves_the_same_nodes_with_the_same_token_and_keys(
    site: Site, tmp_path: Path
) -> None:
    archive = tmp_path / "site.tar.gz"
    took = backup(site.cfg.state_dir, archive, credentials=site.cfg.state_dir / "power.toml")
    assert archive.stat().st_mode & 0o777 == 0o600
    assert took.counts == {"nodes": 2, "clusters": 1}
    assert took.manifest.schema_version == SCHEMA_VERSION
    listed = {i.path for i in took.manifest.files}
    assert listed == {
        "registry.sqlite3", "api-token", "ssh/id_ed25519", "ssh/id_ed25519.pub",
        "keys/c1.engine", "keys/c1.gateway", "power.toml",
        f"hostkeys/{HOST_DIR}/ssh_host_ed25519_key",
        f"hostkeys/{HOST_DIR}/ssh_host_ed25519_key.pub",
    }  # fmt: skip
    site.registry.touch_node("52:54:00:bb:00:09")  # after the backup: not in it

    cfg = config(tmp_path / "restored")
    done = restore(archive, cfg.state_dir)
    assert done.counts == {"nodes": 2, "clusters": 1} and done.replaced == ()
    assert modes(cfg.state_dir) == {
        "registry.sqlite3": 0o600, "api-token": 0o600, "power.toml": 0o600,
        "ssh": 0o700, "ssh/id_ed25519": 0o600, "ssh/id_ed25519.pub": 0o644,
        "keys": 0o700, "keys/c1.engine": 0o600, "keys/c1.gateway": 0o600,
        "hostkeys": 0o700, f"hostkeys/{HOST_DIR}": 0o700,
        f"hostkeys/{HOST_DIR}/ssh_host_ed25519_key": 0o600,
        f"hostkeys/{HOST_DIR}/ssh_host_ed25519_key.pub": 0o644,
    }  # fmt: skip
    assert issued_public_key(cfg.state_dir, MACS[0]) == issued_public_key(
        site.cfg.state_dir, MACS[0]
    )
    assert cfg.state_dir.stat().st_mode & 0o777 == 0o700

    reg = Registry(cfg.registry_path)
    old = site.registry
    assert [n.as_dict() for n in reg.nodes()] == [n.as_dict() for n in old.nodes()][:2]
    assert reg.cluster_names() == ["c1"] and reg.cluster_spec("c1") == old.cluster_spec("c1")
    assert reg.events(MACS[1]) == old.events(MACS[1])
    assert reg.inventory(MACS[0]) == old.inventory(MACS[0])  # the pinned host keys
    assert reg.power(MACS[0]) == old.power(MACS[0])
    for kind in ("engine", "gateway"):
        assert keys.existing(cfg.state_dir, "c1", kind) == keys.existing(
            site.cfg.state_dir, "c1", kind
        )
    assert ensure_keypair(cfg.state_dir).public_line == site.public_key
    token = ensure_api_token(cfg.state_dir)
    assert token == site.token
    assert (cfg.state_dir / "power.toml").read_text() == '[nodes.node0]\npassword = "bmc-secret"\n'
    assert not (cfg.state_dir / "images").exists()

    ctx = AppContext(cfg, reg, token, Metrics(), ScriptRenderer(), authorized_keys=site.public_key)
    client = TestClient(create_app(ctx), client=(NODE_IP, 40000))
    assert client.get("/api/v1/nodes").status_code == 401
    served = client.get("/api/v1/nodes", headers={"Authorization": f"Bearer {site.token}"})
    assert served.status_code == 200
    assert [n["mac"] for n in served.json()] == MACS
    # node0's boot token, issued before the backup, still fetches the same key.
    answer = client.get(f"/api/v1/nodes/{MACS[0]}/authorized_keys",
                        headers={"Authorization": f"Bearer {BOOT_TOKEN}"})  # fmt: skip
    assert answer.status_code == 200 and answer.text.strip() == site.public_key


def test_restore_refuses_a_folder_in_use_unless_forced(site: Site, tmp_path: Path) -> None:
    archive = tmp_path / "site.tar.gz"
    take(site, archive)
    target = config(tmp_path / "other").state_dir
    other = Registry(target / "registry.sqlite3")
    other.touch_node("52:54:00:cc:00:00")  # a -wal file that must not outlive a restore
    keys.secret(target, "gone", "engine")
    (target / "images").mkdir()
    (target / "images" / "kept").write_bytes(b"x")
    with pytest.raises(BackupError, match=r"is not empty .*--force"):
        restore(archive, target)
    assert [n.mac for n in other.nodes()] == ["52:54:00:cc:00:00"]
    other.close()

    done = restore(archive, target, force=True)
    assert set(done.replaced) == {"registry.sqlite3", "keys"}
    assert not (target / "registry.sqlite3-wal").exists()
    assert [n.mac for n in Registry(target / "registry.sqlite3", readonly=True).nodes()] == MACS
    assert not (target / "keys" / "gone.engine").exists()
    assert (target / "images" / "kept").read_bytes() == b"x"
    assert [p.name for p in target.iterdir() if p.name.startswith(".")] == []  # no staging


def rewrite(
    archive: Path,
    change: Callable[[str, bytes], bytes | None],
    extra: tuple[tuple[str, bytes], ...] = (),
) -> None:
    """Rewrite ``archive`` member by member: ``change(name, data)`` gives new bytes (None
    drops the member); ``extra``: (name, bytes) members appended."""
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    with tarfile.open(archive, "w:gz") as tar:
        for member, data in members:
            new = change(member.name, data)
            if new is not None:
                member.size = len(new)
                tar.addfile(member, io.BytesIO(new))
        for name, data in extra:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _manifest_edit(edit: Callable[[dict[str, object]], None]) -> Callable[[str, bytes], bytes]:
    def change(name: str, data: bytes) -> bytes:
        if name != MANIFEST:
            return data
        manifest = json.loads(data)
        edit(manifest)
        return json.dumps(manifest).encode()

    return change


def _newer(manifest: dict[str, object]) -> None:
    manifest["schema_version"] = SCHEMA_VERSION + 1


def _hostile(manifest: dict[str, object]) -> None:
    files = manifest["files"]
    assert isinstance(files, list)
    files.append({"path": "/etc/x", "bytes": 1, "sha256": "0"})


def _flip(archive: Path) -> None:
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))


def _cut(archive: Path) -> None:
    archive.write_bytes(archive.read_bytes()[:-200])


def _garbage(archive: Path) -> None:
    archive.write_bytes(b"hello")


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "a flipped byte": (_flip, "damaged|not a readable backup|does not match"),
    "cut short": (_cut, "damaged|not a readable"),
    "not a backup": (_garbage, "not a readable backup"),
    "a changed token": (
        lambda a: rewrite(a, lambda n, d: b"stolen\n" if n == "api-token" else d),
        "api-token does not match the manifest",
    ),
    "a file left out": (
        lambda a: rewrite(a, lambda n, d: None if n == "keys/c1.engine" else d),
        "missing keys/c1.engine",
    ),
    "a member outside the state folder": (
        lambda a: rewrite(a, lambda n, d: d, extra=(("../escaped", b"x"),)),
        "unexpected member '../escaped'",
    ),
    "a hostile name in the manifest": (
        lambda a: rewrite(a, _manifest_edit(_hostile)),
        "names '/etc/x', not a file a backup holds",
    ),
    "a newer schema": (
        lambda a: rewrite(a, _manifest_edit(_newer)),
        f"schema version {SCHEMA_VERSION + 1}, this provisioner knows up to {SCHEMA_VERSION}",
    ),
    "no manifest": (
        lambda a: rewrite(a, lambda n, d: None if n == MANIFEST else d),
        "no manifest.json first",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_changed_or_newer_backup_is_refused(
    site: Site, tmp_path: Path, case: str
) -> None:
    archive = tmp_path / "site.tar.gz"
    take(site, archive)
    spoil, message = CASES[case]
    spoil(archive)
    target = tmp_path / "restored"
    with pytest.raises(BackupError, match=message):
        restore(archive, target)
    assert list(target.iterdir()) == [] if target.exists() else True
    assert not (tmp_path / "escaped").exists()


def test_a_registry_newer_than_its_manifest_says_is_refused(site: Site, tmp_path: Path) -> None:
    """A forger who also fixes the hashes still meets the registry's own version."""
    import hashlib

    archive = tmp_path / "site.tar.gz"
    take(site, archive)
    with tarfile.open(archive, "r:gz") as tar:
        registry = tar.extractfile("registry.sqlite3").read()  # type: ignore[union-attr]
    loose = tmp_path / "loose.sqlite3"
    loose.write_bytes(registry)
    with sqlite3.connect(loose) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    newer = loose.read_bytes()

    def fixed(manifest: dict[str, object]) -> None:
        for item in manifest["files"]:  # type: ignore[attr-defined]
            if item["path"] == "registry.sqlite3":
                item["bytes"], item["sha256"] = len(newer), hashlib.sha256(newer).hexdigest()

    edit = _manifest_edit(fixed)
    rewrite(archive, lambda n, d: newer if n == "registry.sqlite3" else edit(n, d))
    with pytest.raises(SchemaVersionError, match="upgrade provisioner"):
        restore(archive, tmp_path / "restored")
    assert list((tmp_path / "restored").iterdir()) == []


def test_backup_and_restore_commands_print_json(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "provisioner.toml"
    path.write_text(render_config(
        interface="eth0", address="10.40.0.1/24", mode=Mode.FULL,
        dhcp_range="10.40.0.100-10.40.0.120", state_dir=site.cfg.state_dir,
    ))  # fmt: skip
    archive = tmp_path / "b.tar.gz"
    assert main(["--config", str(path), "backup", str(archive), "--json"]) == 0
    wrote = json.loads(capsys.readouterr().out)
    assert wrote["archive"] == str(archive) and wrote["bytes"] == archive.stat().st_size
    assert wrote["schema_version"] == SCHEMA_VERSION and wrote["counts"]["nodes"] == 2
    assert {"path": "api-token", "bytes": len(site.token) + 1, "mode": "0600"}.items() <= next(
        f for f in wrote["files"] if f["path"] == "api-token"
    ).items()
    assert read_manifest(archive).schema_version == SCHEMA_VERSION

    assert main(["--config", str(path), "backup", str(archive)]) == 1  # exists: --force
    assert "--force" in capsys.readouterr().err
    assert main(["--config", str(path), "backup", str(archive), "--force"]) == 0
    capsys.readouterr()

    target = tmp_path / "new-state"
    argv = ["restore", str(archive), "--state-dir", str(target), "--json"]
    assert main(argv) == 0
    read = json.loads(capsys.readouterr().out)
    assert read["state_dir"] == str(target) and read["counts"] == {"nodes": 2, "clusters": 1}
    assert sorted(f["path"] for f in read["files"]) == sorted(f["path"] for f in wrote["files"])
    assert main(argv) == 1
    assert "is not empty" in capsys.readouterr().err
