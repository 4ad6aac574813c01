"""A profile's kernel requirement (provisioner/kernel_need.py): parsed and refused
in profiles, then held against the image a node would boot at auto-enrollment, at `node
enroll` and at `image use` (the real CLI, a real registry and image store)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from provisioner.boot.routes_boot import inventory_document
from provisioner.cli import main
from provisioner.config import DEFAULT_HWPROFILES
from provisioner.enroll.matching import Enroller
from provisioner.image.store import ImageStore
from provisioner.kernel_need import KernelNeed, refusal, release_version
from provisioner.node_image import image_kernel
from provisioner.profiles import parse_profile
from provisioner.records import EventKind
from provisioner.registry import Registry
from provisioner.states import NodeEvent, NodeState

AGENT = Path(__file__).resolve().parents[1] / "fixtures" / "agent"
MAC = "52:54:00:99:00:01"
NEED = KernelNeed("6.14", "amdxdna is mainline since 6.14")


@pytest.mark.parametrize(
    ("release", "version"),
    [
        ("6.1.0-41-amd64", (6, 1, 0)),
        ("6.12.57+deb13-amd64", (6, 12, 57)),
        ("7.3.4+bpo-amd64", (7, 3, 4)),
        ("6.14", (6, 14, 0)),
        ("vmlinuz", None),
        ("", None),
    ],
)
def test_release_version_reads_the_leading_numbers(
    release: str, version: tuple[int, ...] | None
) -> None:
    assert release_version(release) == version


def test_an_older_kernel_is_refused_naming_both_and_what_to_do() -> None:
    why = refusal("amd-ryzen-ai-npu", NEED, "debian-bookworm@3", "6.1.0-41-amd64")
    assert why is not None
    assert "needs Linux 6.14 or newer (amdxdna is mainline since 6.14)" in why
    assert "debian-bookworm@3 has 6.1.0-41-amd64" in why
    assert "image use IMAGE --profile amd-ryzen-ai-npu" in why


@pytest.mark.parametrize("release", ["6.14.0-1-amd64", "6.17.8+bpo-amd64", "7.3.4", None, "x"])
def test_a_new_enough_or_unknown_kernel_is_not_refused(release: str | None) -> None:
    assert refusal("p", NEED, "img@1", release) is None


def test_minor_versions_compare_as_numbers_not_text() -> None:
    assert refusal("p", KernelNeed("6.9", "w"), "i@1", "6.10.0") is None
    assert refusal("p", KernelNeed("6.10", "w"), "i@1", "6.9.12") is not None


BASE = """\
name: board
version: 1
description: a board
sources: [here]
match:
  all:
    - memory_min_gib: 1
"""


def test_a_profile_carries_its_kernel_need() -> None:
    profile, problems = parse_profile(BASE + 'kernel: {min: "6.14", why: "amdxdna"}\n', "b.yaml")
    assert problems == [] and profile is not None
    assert profile.kernel == KernelNeed("6.14", "amdxdna")


@pytest.mark.parametrize(
    ("kernel", "said"),
    [
        ('kernel: {min: "6.14"}', "kernel.why: required key missing"),
        ('kernel: {why: "x"}', "kernel.min: required key missing"),
        ('kernel: {min: "latest", why: "x"}', "'latest' is not a kernel release such as 6.14"),
        ('kernel: {min: 6.10, why: "x"}', "kernel.min"),  # a float: 6.1, so a string
        ('kernel: {min: "6.14", why: "x", max: "7"}', "max"),
        ('kernel: "6.14"', "kernel"),
    ],
)
def test_a_bad_kernel_need_is_refused_with_line_and_reason(kernel: str, said: str) -> None:
    profile, problems = parse_profile(BASE + kernel + "\n", "b.yaml")
    assert profile is None or profile.kernel is None
    assert problems, kernel
    text = " ".join(str(p) for p in problems)
    assert said in text and "b.yaml:8" in text, text


# ------------------------------------------------------------ enrollment and image use


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state folder: profiles whose qemu-lab needs 6.14, and an image store with
    debian-bookworm@1 (Linux 6.1) and @2 (a backports kernel)."""
    profiles = tmp_path / "hwprofiles"
    shutil.copytree(DEFAULT_HWPROFILES, profiles)
    lab = profiles / "qemu-lab.yaml"
    lab.write_text(lab.read_text() + '\nkernel: {min: "6.14", why: "the lab driver"}\n')
    store = ImageStore(tmp_path / "state" / "images")
    for release in ("6.1.0-41-amd64", "6.17.8+bpo-amd64"):
        files = {"vmlinuz": release.encode(), "initrd": b"I", "root.squashfs": b"R"}
        image, _ = store.publish_files("debian-bookworm", files)
        manifest = image.path / "manifest.json"
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()),
                                        "kernel_release": release}))  # fmt: skip
    return tmp_path


def report(reg: Registry, enroller: Enroller) -> None:
    raw = (AGENT / "lab-qemu-q35-bios.txt").read_bytes()
    reg.touch_node(MAC)
    reg.store_inventory(MAC, json.dumps(inventory_document(raw, "text/plain; charset=utf-8")))
    enroller.on_inventory(MAC)


def test_auto_enrollment_into_an_old_kernel_is_refused_then_goes_on_a_newer_image(
    state: Path,
) -> None:
    reg = Registry(state / "registry.sqlite3")
    enroller = Enroller(
        reg, state / "hwprofiles", "node{n}", auto_enroll=True,
        image_kernel=image_kernel(reg, state / "state" / "images", "debian-bookworm@1"),
    )  # fmt: skip
    report(reg, enroller)
    node = reg.node(MAC)
    assert node is not None and node.state is NodeState.MATCHED  # not enrolled
    [refused] = [e for e in reg.events(MAC) if e.kind is EventKind.REFUSED]
    assert refused.detail["what"] == "enroll"
    assert "debian-bookworm@1 has 6.1.0-41-amd64" in str(refused.detail["why"])

    reg.set_profile_image("qemu-lab", "debian-bookworm@2")
    report(reg, enroller)
    node = reg.node(MAC)
    assert node is not None and node.state is NodeState.ENROLLED


def test_a_node_power_cycled_to_enroll_is_held_at_matched_too(state: Path) -> None:
    """`enroll --power-cycle` (and the lab) puts a node in ``enrolling``, where a match
    used to enroll it whatever its image's kernel: it is held at ``matched`` instead."""
    reg = Registry(state / "registry.sqlite3")
    enroller = Enroller(
        reg, state / "hwprofiles", "node{n}",
        image_kernel=image_kernel(reg, state / "state" / "images", "debian-bookworm@1"),
    )  # fmt: skip
    reg.touch_node(MAC)
    reg.transition(MAC, NodeEvent.POWER_CYCLE)
    report(reg, enroller)
    node = reg.node(MAC)
    assert node is not None and node.state is NodeState.MATCHED
    [refused] = [e for e in reg.events(MAC) if e.kind is EventKind.REFUSED]
    assert "needs Linux 6.14 or newer" in str(refused.detail["why"])
    # On an image with a new enough kernel, the same power cycle enrolls it.
    reg.set_profile_image("qemu-lab", "debian-bookworm@2")
    reg.transition(MAC, NodeEvent.POWER_CYCLE)
    report(reg, enroller)
    node = reg.node(MAC)
    assert node is not None and node.state is NodeState.ENROLLED


def test_an_enroller_without_an_image_store_checks_nothing(state: Path) -> None:
    reg = Registry(state / "registry.sqlite3")
    enroller = Enroller(reg, state / "hwprofiles", "node{n}", auto_enroll=True)
    report(reg, enroller)
    node = reg.node(MAC)
    assert node is not None and node.state is NodeState.ENROLLED


def run(config: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--config", str(config), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_node_enroll_and_image_use_refuse_an_image_whose_kernel_is_too_old(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = state / "provisioner.toml"
    config.write_text(
        '[network]\ninterface = "lo"\naddress = "127.0.0.1/8"\nmode = "proxy"\n'
        f'[paths]\nstate_dir = "{state / "state"}"\n'
        f'[cluster]\nprofiles = "{state / "hwprofiles"}"\n'
        '[boot]\nimage = "debian-bookworm@1"\n'
    )
    reg = Registry(state / "state" / "registry.sqlite3")
    report(reg, Enroller(reg, state / "hwprofiles", "node{n}"))
    code, out, err = run(config, capsys, "node", "enroll", MAC, "--json")
    assert code == 1 and json.loads(out)["enrolled"] == []
    assert "needs Linux 6.14 or newer (the lab driver)" in json.loads(out)["failed"][0]["error"]
    node = reg.node(MAC)
    assert node is not None and node.state is NodeState.MATCHED

    code, _, err = run(config, capsys, "image", "use", "debian-bookworm@1", "--profile", "qemu-lab")
    assert code == 4 and "has 6.1.0-41-amd64" in err
    assert reg.profile_images() == {}  # nothing changed
    code, _, _ = run(config, capsys, "image", "use", "debian-bookworm@2", "--profile", "qemu-lab")
    assert code == 0
    code, out, _ = run(config, capsys, "node", "enroll", MAC, "--json")
    assert code == 0 and json.loads(out)["enrolled"][0]["state"] == "enrolled"
