"""`provisioner image list/show/use/remove` and `node enroll` on a registry and store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner.cli import main
from provisioner.config import Mode, load_config, render_config
from provisioner.image.store import ImageStore
from provisioner.registry import Registry
from provisioner.states import NodeEvent, NodeState

MAC = "52:54:00:aa:bb:07"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "provisioner.toml"
    path.write_text(
        render_config(
            interface="eth0",
            address="10.30.0.1/24",
            mode=Mode.FULL,
            dhcp_range="10.30.0.100-10.30.0.120",
            state_dir=tmp_path / "state",
        )
    )
    return path


def run(config: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--config", str(config), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def publish(config: Path, root: bytes) -> None:
    store = ImageStore(load_config(config).image_dir)
    store.publish_files("debian-trixie", {"vmlinuz": b"K", "initrd": b"I", "root.squashfs": root})


def test_list_show_use_and_remove(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    publish(config, b"one")
    publish(config, b"two")
    code, out, _ = run(config, capsys, "image", "list", "--json")
    assert code == 0
    assert [(i["ref"], i["kind"]) for i in json.loads(out)] == [
        ("debian-trixie@1", "rootfs"),
        ("debian-trixie@2", "rootfs"),
    ]
    code, out, _ = run(config, capsys, "image", "list")
    assert "debian-trixie@2 (newest)" in out

    # An enrolled qemu-lab node boots the newest version next.
    registry = Registry(load_config(config).registry_path)
    registry.touch_node(MAC)
    registry.store_inventory(MAC, "{}")
    registry.transition(MAC, NodeEvent.INVENTORY)
    registry.set_profile(MAC, "qemu-lab")
    registry.transition(MAC, NodeEvent.MATCH)
    code, out, _ = run(config, capsys, "node", "enroll", MAC, "--json")
    assert code == 0 and json.loads(out)["enrolled"][0]["state"] == NodeState.ENROLLED.value
    code, out, _ = run(config, capsys, "image", "show", "debian-trixie", "--json")
    shown = json.loads(out)
    assert shown["ref"] == "debian-trixie@2" and shown["nodes"] == {MAC: "boots it next"}
    assert shown["ram_needed"] > 512 << 20 and shown["findings"] == []

    code, _, err = run(config, capsys, "image", "remove", "debian-trixie@2")
    assert code == 4 and f"debian-trixie@2 is in use by 1 node(s): {MAC} (boots it next)" in err
    assert ImageStore(load_config(config).image_dir).find("debian-trixie@2") is not None

    # Pin the profile to version 1: version 2 is free to go, version 1 is now in use.
    code, out, _ = run(config, capsys, "image", "use", "debian-trixie@1", "--profile", "qemu-lab")
    assert code == 0 and "pinned" in out
    assert registry.profile_images() == {"qemu-lab": "debian-trixie@1"}
    code, out, _ = run(config, capsys, "image", "remove", "debian-trixie@2", "--json")
    assert code == 0 and json.loads(out) == {"removed": ["debian-trixie@2"]}
    code, _, err = run(config, capsys, "image", "remove", "debian-trixie")
    assert code == 4 and "debian-trixie@1 is in use" in err


def test_use_refuses_unknown_profiles_and_unbuilt_images(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(config, capsys, "image", "use", "debian-trixie", "--profile", "qemu-lab")
    assert code == 3 and "no image debian-trixie" in err
    publish(config, b"x")
    code, _, err = run(config, capsys, "image", "use", "debian-trixie", "--profile", "nope")
    assert code == 3 and "no profile 'nope'" in err
    code, _, err = run(config, capsys, "image", "show", "Bad Name")
    assert code == 1 and "not an image name" in err


def test_enroll_refuses_a_node_without_a_profile(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Registry(load_config(config).registry_path).touch_node(MAC)
    code, _, err = run(config, capsys, "node", "enroll", MAC, "node9")
    assert code == 1
    assert f"{MAC}: not enrolled: no profile yet (state new)" in err
    assert "node9: not enrolled: no such node" in err


def publish_with(config: Path, name: str, root: bytes, manifest: dict[str, object]) -> None:
    store = ImageStore(load_config(config).image_dir)
    files = {"vmlinuz": b"K", "initrd": b"I", "root.squashfs": root}
    store.publish_files(name, {**files, "manifest.json": json.dumps(manifest).encode()})


LAYERED = {
    "name": "debian-trixie-vulkan",
    "kernel_release": "6.12.118+deb13-amd64",
    "packages": [
        "bash 5.2.37-2",
        "libllvm19 1:19.1.7-3",
        "mesa-vulkan-drivers 25.0.7-2",
        "python3 3.13.5-1",
    ],
    "squashfs": {"name": "root.squashfs", "size": 3, "sha256": "a" * 64},
    "layer": {
        "recipe": "debian-trixie-vulkan.toml",
        "base": "debian-trixie.toml",
        "packages": ["libllvm19 1:19.1.7-3", "mesa-vulkan-drivers 25.0.7-2"],
        "base_packages": 1,
        "added_bytes": 250 << 20,
        "max_bytes": 300 << 20,
        "kernel_suite": None,
        "modules": {},
        "dkms": [],
    },
}


def test_diff_names_what_moved(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    publish_with(config, "debian-trixie-vulkan", b"one", LAYERED)
    newer = {
        **LAYERED,
        "kernel_release": "6.12.119+deb13-amd64",
        "packages": ["bash 5.2.37-2", "mesa-vulkan-drivers 25.0.7-3", "vulkan-tools 1.4"],
        "squashfs": {"name": "root.squashfs", "size": 4, "sha256": "b" * 64},
    }
    publish_with(config, "debian-trixie-vulkan", b"two", newer)
    code, out, _ = run(
        config, capsys, "image", "diff", "debian-trixie-vulkan@1", "debian-trixie-vulkan@2"
    )
    assert code == 0
    assert "kernel_release: 6.12.118+deb13-amd64 -> 6.12.119+deb13-amd64" in out
    assert "  + vulkan-tools 1.4" in out
    assert "  - libllvm19 1:19.1.7-3" in out
    assert "  ~ mesa-vulkan-drivers 25.0.7-2 -> 25.0.7-3" in out
    code, out, _ = run(
        config, capsys, "image", "diff", "debian-trixie-vulkan@1", "debian-trixie-vulkan",
        "--json",
    )  # fmt: skip
    diff = json.loads(out)
    assert diff["b"] == "debian-trixie-vulkan@2" and not diff["identical"]
    assert diff["packages"]["changed"] == {
        "mesa-vulkan-drivers": {"a": "25.0.7-2", "b": "25.0.7-3"}
    }
    assert diff["fields"]["squashfs.sha256"] == {"a": "a" * 64, "b": "b" * 64}
    code, out, _ = run(
        config, capsys, "image", "diff", "debian-trixie-vulkan@1", "debian-trixie-vulkan@1"
    )
    assert code == 0 and "identical: the same packages and the same bytes" in out
    code, _, err = run(config, capsys, "image", "diff", "debian-trixie-vulkan@1", "nope")
    assert code == 3 and "nope" in err


def test_show_prints_the_layer_and_the_profiles_that_boot_it(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_with(config, "debian-trixie-vulkan", b"one", LAYERED)
    code, out, _ = run(config, capsys, "image", "show", "debian-trixie-vulkan")
    assert code == 0
    assert (
        "layer debian-trixie-vulkan.toml on debian-trixie.toml: 2 packages on 1, "
        "+250.0 MiB unpacked (max 300.0 MiB)"
    ) in out
    assert "profiles that boot it: none" in out
    assert "Python 3.13 (vLLM wheelhouses are built for it)" in out
    code, _, _ = run(
        config, capsys, "image", "use", "debian-trixie-vulkan", "--profile", "qemu-lab"
    )
    assert code == 0
    code, out, _ = run(config, capsys, "image", "show", "debian-trixie-vulkan", "--json")
    shown = json.loads(out)
    assert shown["profiles"] == ["qemu-lab"] and shown["python_version"] == "3.13"
    # The shipped Ryzen AI profile names its layered image itself.
    publish_with(config, "debian-trixie-ryzen-ai", b"r", {**LAYERED, "kernel_release": "7.3.4"})
    code, out, _ = run(config, capsys, "image", "show", "debian-trixie-ryzen-ai", "--json")
    assert json.loads(out)["profiles"] == ["amd-ryzen-ai-npu"]
