"""What a rolling upgrade stands on: a node pinned to an image version in the registry,
the profile's previous image kept for --rollback, the boot policy giving a pin first, and
the image a container node's boot script names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.boot.ipxe import ScriptRenderer
from provisioner.boot.policy import BootKind, BootSpec
from provisioner.errors import RegistryError
from provisioner.image.choice import image_for
from provisioner.lab.containers import image_of_script
from provisioner.registry import Registry
from provisioner.states import NodeState

MAC = "52:54:00:12:34:56"
OTHER = "52:54:00:12:34:57"
PROFILE = "qemu-lab"


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(tmp_path / "registry.sqlite3")
    yield registry
    registry.close()


# ------------------------------------------------------------- pins


def test_a_pin_is_kept_replaced_and_dropped(reg: Registry) -> None:
    reg.touch_node(MAC)
    reg.touch_node(OTHER)
    assert reg.image_pins() == {}
    reg.pin_image(MAC, "debian-bookworm@2")
    assert reg.image_pins() == {MAC: "debian-bookworm@2"}
    reg.pin_image(MAC, "debian-bookworm@3")
    reg.pin_image(OTHER, "debian-bookworm@2")
    assert reg.image_pins() == {MAC: "debian-bookworm@3", OTHER: "debian-bookworm@2"}
    reg.pin_image(MAC, None)
    assert reg.image_pins() == {OTHER: "debian-bookworm@2"}


def test_a_pin_of_an_unknown_mac_is_refused(reg: Registry) -> None:
    with pytest.raises(RegistryError, match="no node"):
        reg.pin_image(MAC, "debian-bookworm@2")
    assert reg.image_pins() == {}


def test_forget_drops_the_pin(reg: Registry) -> None:
    reg.touch_node(MAC)
    reg.pin_image(MAC, "debian-bookworm@2")
    reg.forget(MAC)
    assert reg.image_pins() == {}
    reg.touch_node(MAC)  # rediscovered: it boots what its profile says, not the old pin
    assert reg.image_pins() == {}


# ------------------------------------------------------------- the profile's previous image


def test_a_profile_set_for_the_first_time_has_no_previous(reg: Registry) -> None:
    assert reg.previous_profile_image(PROFILE) is None
    reg.set_profile_image(PROFILE, "debian-bookworm@1")
    assert reg.previous_profile_image(PROFILE) is None


def test_setting_another_image_keeps_the_one_it_replaced(reg: Registry) -> None:
    reg.set_profile_image(PROFILE, "debian-bookworm@1")
    reg.set_profile_image(PROFILE, "debian-bookworm@2")
    assert reg.profile_images() == {PROFILE: "debian-bookworm@2"}
    assert reg.previous_profile_image(PROFILE) == "debian-bookworm@1"
    reg.set_profile_image(PROFILE, "debian-bookworm@3")
    assert reg.previous_profile_image(PROFILE) == "debian-bookworm@2"
    assert reg.previous_profile_image("other") is None


def test_an_explicit_previous_wins_over_the_one_replaced(reg: Registry) -> None:
    reg.set_profile_image(PROFILE, "debian-bookworm")  # follows its newest: @1 then
    reg.set_profile_image(PROFILE, "debian-bookworm@2", previous="debian-bookworm@1")
    assert reg.previous_profile_image(PROFILE) == "debian-bookworm@1"


def test_setting_the_same_image_again_never_makes_it_its_own_previous(reg: Registry) -> None:
    reg.set_profile_image(PROFILE, "debian-bookworm@1")
    reg.set_profile_image(PROFILE, "debian-bookworm@2")
    reg.set_profile_image(PROFILE, "debian-bookworm@2")
    assert reg.previous_profile_image(PROFILE) != "debian-bookworm@2"
    reg.set_profile_image(PROFILE, "debian-bookworm@3", previous="debian-bookworm@3")
    assert reg.previous_profile_image(PROFILE) != "debian-bookworm@3"


def test_setting_the_same_image_again_keeps_the_one_before(reg: Registry) -> None:
    reg.set_profile_image(PROFILE, "debian-bookworm@1")
    reg.set_profile_image(PROFILE, "debian-bookworm@2")
    reg.set_profile_image(PROFILE, "debian-bookworm@2")  # `image use` typed twice
    assert reg.previous_profile_image(PROFILE) == "debian-bookworm@1"


# ------------------------------------------------------------- the boot policy


@pytest.mark.parametrize(
    ("pin", "chosen", "profile_image", "expected"),
    [
        ("pinned@2", {PROFILE: "chosen@1"}, "profile@1", "pinned@2"),
        ("pinned@2", {}, "profile@1", "pinned@2"),
        ("pinned@2", {}, None, "pinned@2"),
        (None, {PROFILE: "chosen@1"}, "profile@1", "chosen@1"),
        (None, {"other": "chosen@1"}, "profile@1", "profile@1"),
        (None, {}, None, "default@1"),
    ],
)
def test_a_pin_wins_over_every_other_choice(
    pin: str | None, chosen: dict[str, str], profile_image: str | None, expected: str
) -> None:
    assert image_for(PROFILE, profile_image, chosen, "default@1", pin) == expected


# ------------------------------------------------------------- a container's boot script


def script(spec: BootSpec) -> str:
    return ScriptRenderer().render(
        spec, mac=MAC, state=NodeState.ENROLLED, base="http://10.30.0.1:8080", token="t0k3n"
    )


def test_the_image_of_a_rendered_boot_script() -> None:
    live = BootSpec(BootKind.IMAGE, image="debian-bookworm@2", squashfs="root.squashfs",
                    root_sha256="ab" * 32, cmdline="console=ttyS0")  # fmt: skip
    plain = BootSpec(BootKind.DISCOVERY, image="discovery@7", cmdline="quiet")
    assert image_of_script(script(live)) == "debian-bookworm@2"
    assert image_of_script(script(plain)) == "discovery@7"


def test_the_image_of_a_literal_kernel_line() -> None:
    text = (
        "#!ipxe\n"
        "kernel http://x/images/debian-bookworm@2/vmlinuz?mac=52:54:00:12:34:56"
        " initrd=initrd boot=live || goto failed\n"
        "boot\n"
    )
    assert image_of_script(text) == "debian-bookworm@2"


def test_a_script_without_a_kernel_line_names_no_image() -> None:
    assert image_of_script(script(BootSpec(BootKind.LOCAL))) is None
    assert image_of_script("#!ipxe\necho kernel http://x/images/a@1/vmlinuz\n") is None
    assert image_of_script("") is None


def test_a_kernel_url_outside_images_names_no_image() -> None:
    assert image_of_script("#!ipxe\nkernel http://x/boot/vmlinuz?mac=m quiet\n") is None
    assert image_of_script("#!ipxe\nkernel http://x/images/vmlinuz\n") is None
