"""The versioned image store, the guardrails and the control node's key pair."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from provisioner.image import ImageError, guardrails
from provisioner.image.store import ImageInUse, ImageRef, ImageStore, users_of
from provisioner.sshkeys import SshKeyError, ensure_keypair, fingerprint

GiB = 1 << 30


def test_refs_parse_and_print() -> None:
    assert ImageRef.parse("debian-bookworm") == ImageRef("debian-bookworm", None)
    assert ImageRef.parse("debian-bookworm@12") == ImageRef("debian-bookworm", 12)
    assert str(ImageRef("x", 3)) == "x@3"
    for bad in ("", "Debian", "x@0", "x@", "x@1@2", "../x", "x y"):
        with pytest.raises(ImageError, match="not an image name"):
            ImageRef.parse(bad)


def test_versions_are_kept_and_the_name_follows_the_newest(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    one, new = store.publish_files("node", {"vmlinuz": b"k1", "initrd": b"i1"})
    assert (one.ref, new) == ("node@1", True)
    two, new = store.publish_files("node", {"vmlinuz": b"k2", "initrd": b"i1"})
    assert (two.ref, new) == ("node@2", True)
    assert [i.ref for i in store.images()] == ["node@1", "node@2"]
    assert (tmp_path / "node").resolve() == two.path
    assert (tmp_path / "node" / "vmlinuz").read_bytes() == b"k2"
    assert (tmp_path / "node@1" / "vmlinuz").read_bytes() == b"k1"  # old versions stay
    assert store.get("node").ref == "node@2" and store.get("node@1").ref == "node@1"
    assert store.find("node@7") is None
    with pytest.raises(ImageError, match=r"no image node@7 .*have: node@1, node@2"):
        store.get("node@7")
    assert two.kind == "initrd" and two.squashfs is None and two.size("vmlinuz") == 2


def test_the_same_files_publish_no_new_version(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    store.publish_files("node", {"vmlinuz": b"k", "initrd": b"i", "root.squashfs": b"r"})
    again, new = store.publish_files(
        "node", {"vmlinuz": b"k", "initrd": b"i", "root.squashfs": b"r"}
    )
    assert (again.ref, new, again.kind, again.squashfs) == (
        "node@1",
        False,
        "rootfs",
        "root.squashfs",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node", "node@1"]  # no staging left


def test_removing_moves_the_name_back_and_the_last_removes_it(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    store.publish_files("node", {"vmlinuz": b"1", "initrd": b"i"})
    store.publish_files("node", {"vmlinuz": b"2", "initrd": b"i"})
    store.remove(store.get("node@2"))
    assert (tmp_path / "node").resolve().name == "node@1"
    store.remove(store.get("node@1"))
    assert not (tmp_path / "node").is_symlink() and store.images() == []


def test_a_folder_from_before_versions_is_adopted(tmp_path: Path) -> None:
    old = tmp_path / "discovery"
    old.mkdir()
    (old / "vmlinuz").write_bytes(b"k")
    (old / "manifest.json").write_text(json.dumps({"name": "discovery"}))
    assert [i.ref for i in ImageStore(tmp_path).images()] == ["discovery@1"]
    assert (tmp_path / "discovery" / "vmlinuz").read_bytes() == b"k"  # the name still works


def test_users_of_names_each_node_and_why(tmp_path: Path) -> None:
    image, _ = ImageStore(tmp_path).publish_files("node", {"vmlinuz": b"k", "initrd": b"i"})
    users = users_of(
        image,
        booted={"node0": "node@1", "node1": "discovery@1", "node2": "node@1"},
        planned={"node1": "node@1", "node2": "node@1", "node3": "node@2"},
    )
    assert users == {"node0": "booted it last", "node1": "boots it next", "node2": "booted it last"}
    assert "node0 (booted it last)" in str(ImageInUse("node@1", users))


def test_guardrails_initrd_limits() -> None:
    assert guardrails.check_initrd(40 << 20) == []
    big = guardrails.check_initrd(int(3.5 * GiB))
    assert [f.level for f in big] == ["warning"] and "legacy BIOS" in big[0].reason
    assert guardrails.check_initrd(int(3.5 * GiB), "bios")[0].is_error
    assert guardrails.check_initrd(int(3.5 * GiB), "uefi")[0].level == "warning"
    huge = guardrails.check_initrd(5 * GiB, "uefi")
    assert huge[0].is_error and "cannot unpack an initramfs over 4 GiB" in huge[0].reason
    with pytest.raises(ImageError, match=r"^img: the initrd is 5\.00 GiB"):
        guardrails.refuse_errors("img", huge)
    guardrails.refuse_errors("img", big)  # warnings pass


def test_guardrails_ram_for_a_root_held_in_ram() -> None:
    sizes = {"squashfs": 143 << 20, "initrd": 42 << 20, "kernel": 8 << 20}
    needed = guardrails.ram_needed(143 << 20, 42 << 20, 8 << 20)
    assert needed == (143 + 3 * 42 + 8 + 512) << 20
    assert guardrails.check_ram(None, **sizes) == []  # unknown RAM: no verdict
    assert guardrails.check_ram(needed, **sizes) == []
    small = guardrails.check_ram(512 << 20, **sizes)
    assert small[0].is_error and "has 512 MiB of RAM" in small[0].reason
    assert f"at least {needed >> 20} MiB" in small[0].reason


def test_keypair_is_made_once_private_and_readable_by_openssh(tmp_path: Path) -> None:
    pair = ensure_keypair(tmp_path)
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    assert pair.public_line.startswith("ssh-ed25519 AAAA")
    assert ensure_keypair(tmp_path) == pair  # the same key at the next start
    # OpenSSH (scripts/setup installs openssh-client) agrees on the public half and the
    # fingerprint of the key we made.
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(pair.private_path)], capture_output=True, text=True
    )
    assert derived.returncode == 0, derived.stderr
    assert derived.stdout.split()[:2] == pair.public_line.split()[:2]
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(pair.private_path.with_suffix(".pub"))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert listed.stdout.split()[1] == pair.fingerprint
    pair.private_path.chmod(0o644)
    with pytest.raises(SshKeyError, match="readable by others"):
        ensure_keypair(tmp_path)
    with pytest.raises(SshKeyError, match="not an OpenSSH public key"):
        fingerprint("garbage")
