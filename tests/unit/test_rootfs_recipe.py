"""The node image's pure parts: recipe validation, the mirror from apt's sources, the
mmdebstrap command line, the kernel in /boot, dpkg-query output and the manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.image import ImageError, RecipeError
from provisioner.image.discovery import Artifact
from provisioner.image.rootfs import (
    ACCEL_EXPORTER_PATH,
    ACCEL_SERVICE_PATH,
    ACCEL_TIMER_PATH,
    AGENT_PATH,
    AGENT_UNIT,
    EARLY_PREFIX,
    EXECUTABLE,
    KEYS_UNIT_PATH,
    NETCONSOLE_PATH,
    UNIT_PATH,
    Manifest,
    customize_commands,
    kernel_release,
    mmdebstrap_argv,
    parse_dpkg_query,
    stage,
    staged_files,
)
from provisioner.image.rootfs_recipe import (
    FALLBACK_MIRROR,
    User,
    load_recipe,
    mirror_from_sources,
    parse_recipe,
)

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------- recipe


@pytest.mark.parametrize("suite", ["bookworm", "trixie"])
def test_the_shipped_recipes_load(suite: str) -> None:
    recipe = load_recipe(ROOT / "images" / f"debian-{suite}.toml")
    assert recipe.name == f"debian-{suite}"
    assert recipe.suite == suite
    assert recipe.variant == "apt"
    assert recipe.mirror is None
    assert recipe.kernel_package == "linux-image-amd64"
    assert {"systemd", "openssh-server", "live-boot", "busybox", "curl"} <= set(recipe.packages)
    assert recipe.compression == "zstd"
    assert recipe.users == (User("root", ()),)
    assert recipe.agent == ROOT / "images/agent/provisioner-agent"
    assert recipe.netconsole == ROOT / "images/initramfs/provisioner-netconsole"
    assert staged_files(recipe)[NETCONSOLE_PATH] == recipe.netconsole.read_bytes()
    assert NETCONSOLE_PATH.startswith(EARLY_PREFIX) and NETCONSOLE_PATH in EXECUTABLE
    assert len(recipe.sha256) == 64
    # What the appliance's Prometheus scrapes: the node exporter and the accelerators.
    assert "prometheus-node-exporter" in recipe.packages
    assert recipe.accel_exporter == ROOT / "images/agent/provisioner-accel-exporter"


GOOD = """\
name = "node"
[debian]
suite = "bookworm"
[kernel]
package = "linux-image-amd64"
[packages]
include = ["systemd", "openssh-server", "live-boot"]
[files]
agent = "agent.sh"
"""


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    (tmp_path / "agent.sh").write_text("#!/bin/sh\n")
    (tmp_path / "motd").write_text("hello\n")
    return tmp_path


def test_a_minimal_recipe_takes_the_defaults(recipe_dir: Path) -> None:
    recipe = parse_recipe(GOOD.encode(), recipe_dir / "r.toml")
    assert recipe.variant == "apt"
    assert recipe.mirror is None
    assert recipe.components == ("main",)
    assert recipe.compression == "zstd"
    assert recipe.users == ()
    assert recipe.extra == ()
    assert recipe.agent == recipe_dir / "agent.sh"


def test_extra_files_and_users(recipe_dir: Path) -> None:
    text = GOOD + (
        '[files.extra]\n"/etc/motd" = "motd"\n'
        '[[users]]\nname = "ops"\nssh_keys = ["ssh-ed25519 AAAA ops@x"]\n'
    )
    recipe = parse_recipe(text.encode(), recipe_dir / "r.toml")
    assert recipe.extra == (("/etc/motd", recipe_dir / "motd"),)
    assert recipe.users == (User("ops", ("ssh-ed25519 AAAA ops@x",)),)
    files = staged_files(recipe)
    assert files["/etc/motd"] == b"hello\n"
    assert files[AGENT_PATH] == b"#!/bin/sh\n"
    assert files[UNIT_PATH] == AGENT_UNIT.encode()
    # The control node's key is installed before the agent reports (post-install logs in
    # as soon as the inventory arrives).
    assert b"provisioner-agent --keys" in files[KEYS_UNIT_PATH]
    assert "provisioner-keys.service" in AGENT_UNIT.split("After=")[1].splitlines()[0]


def test_the_accelerator_exporter_is_installed_executable_with_its_timer_enabled(
    recipe_dir: Path, tmp_path: Path
) -> None:
    bare = parse_recipe(GOOD.encode(), recipe_dir / "r.toml")
    assert bare.accel_exporter is None
    assert ACCEL_EXPORTER_PATH not in staged_files(bare)
    assert not any("accel" in h for h in customize_commands(bare, Path("/s")))

    (recipe_dir / "accel").write_text("#!/usr/bin/python3\n")
    text = GOOD + 'accel_exporter = "accel"\n'  # [files] is the last table of GOOD
    recipe = parse_recipe(text.encode(), recipe_dir / "r.toml")
    files = staged_files(recipe)
    assert files[ACCEL_EXPORTER_PATH] == b"#!/usr/bin/python3\n"
    assert f"ExecStart={ACCEL_EXPORTER_PATH}" in files[ACCEL_SERVICE_PATH].decode()
    assert "OnUnitActiveSec=15s" in files[ACCEL_TIMER_PATH].decode()
    hooks = customize_commands(recipe, Path("/s"))
    assert 'chroot "$1" systemctl enable provisioner-accel-exporter.timer' in hooks
    staged, early = tmp_path / "staged", tmp_path / "early"
    stage(files, staged, early)
    assert (staged / ACCEL_EXPORTER_PATH.lstrip("/")).stat().st_mode & 0o777 == 0o755
    assert (staged / ACCEL_TIMER_PATH.lstrip("/")).stat().st_mode & 0o777 == 0o644

    missing = GOOD + 'accel_exporter = "gone"\n'
    with pytest.raises(RecipeError, match=r"files\.accel_exporter"):
        parse_recipe(missing.encode(), recipe_dir / "r.toml")


BAD = [
    ("name = [", "(file)", "not valid TOML"),
    (GOOD + "colour = 1\n", "colour", "unknown key"),
    (GOOD.replace('name = "node"', 'name = "No Spaces"'), "name", "does not match"),
    (GOOD.replace('suite = "bookworm"', ""), "debian.suite", "missing"),
    (GOOD.replace("[debian]", '[debian]\nvariant = "buildd"'), "debian.variant", "not one of"),
    (GOOD.replace("[debian]", '[debian]\nmirror = "ftp://x"'), "debian.mirror", "http(s)://"),
    (GOOD.replace("[debian]", "[debian]\ncomponents = 'main'"), "debian.components", "a list"),
    (GOOD.replace("[debian]", "[debian]\nsuit = 'x'"), "debian.suit", "unknown key"),
    (GOOD.replace('"live-boot"', '"Bad Name"'), "packages.include", "does not match"),
    (GOOD.replace(', "live-boot"', ""), "packages.include", "must include live-boot"),
    (
        GOOD.replace("[kernel]\n", "").replace('package = "linux-image-amd64"\n', ""),
        "kernel",
        "missing table",
    ),
    (GOOD + '[squashfs]\ncompression = "bz2"\n', "squashfs.compression", "not one of"),
    (GOOD.replace("agent.sh", "nope.sh"), "files.agent", "is not a file"),
    (GOOD + '[files.extra]\n"etc/motd" = "motd"\n', "files.extra.'etc/motd'", "absolute"),
    (GOOD + '[files.extra]\n"/a/../b" = "motd"\n', "files.extra.'/a/../b'", "absolute"),
    (GOOD + '[files.extra]\n"/etc/x" = "gone"\n', "files.extra.'/etc/x'", "is not a file"),
    (GOOD + "users = 3\n", "users", "array of tables"),
    (GOOD + '[[users]]\nname = "Root!"\n', "users[0].name", "user name"),
    (GOOD + '[[users]]\nname = "a"\nshell = "x"\n', "users[0].shell", "unknown key"),
    (GOOD + '[[users]]\nname = "a"\nssh_keys = ["hello"]\n', "users[0].ssh_keys", "public key"),
    (GOOD + '[[users]]\nname = "a"\n[[users]]\nname = "a"\n', "users[1].name", "twice"),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD)
def test_bad_recipes_name_the_file_the_key_and_why(
    recipe_dir: Path, text: str, key: str, reason: str
) -> None:
    # Top-level keys after a table header land in that table: put stray ones first.
    if text.startswith(GOOD) and text[len(GOOD) :].startswith(("colour", "users =")):
        text = text[len(GOOD) :] + GOOD
    with pytest.raises(RecipeError) as caught:
        parse_recipe(text.encode(), recipe_dir / "r.toml")
    assert caught.value.key == key
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"{recipe_dir / 'r.toml'}: {key}: ")


def test_an_unreadable_recipe(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read"):
        load_recipe(tmp_path / "missing.toml")


# ------------------------------------------------------------------------- mirror

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""

ONE_LINE = """\
# deb http://old/debian bookworm main
deb [arch=amd64 signed-by=/k] http://mirror.example/debian/ bookworm main
"""


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ([("debian.sources", DEB822)], "http://deb.debian.org/debian"),
        (
            [("debian.sources", DEB822.replace("Types: deb\n#", "Types: deb\nEnabled: no\n#", 1))],
            None,
        ),
        ([("debian.sources", "Types: deb-src\nURIs: http://m/debian\n")], None),
        ([("sources.list", ONE_LINE)], "http://mirror.example/debian"),
        (
            [
                ("sources.list", "deb http://security.debian.org/ bookworm-security main\n"),
                ("local.list", "deb file:/srv/debian bookworm main\n"),
            ],
            "file:/srv/debian",
        ),
        ([], None),
    ],
)
def test_mirror_from_sources(texts: list[tuple[str, str]], expected: str | None) -> None:
    assert mirror_from_sources(texts) == expected


def test_the_fallback_mirror_is_debians() -> None:
    assert FALLBACK_MIRROR == "http://deb.debian.org/debian"


# ------------------------------------------------------------------- mmdebstrap argv


def test_mmdebstrap_argv(recipe_dir: Path) -> None:
    text = GOOD + '[[users]]\nname = "root"\nssh_keys = ["ssh-ed25519 AAAA me@x"]\n'
    recipe = parse_recipe(text.encode(), recipe_dir / "r.toml")
    argv = mmdebstrap_argv(
        recipe, "http://m/debian", Path("/w/root"), Path("/c/apt archives"), Path("/w/staged")
    )
    assert argv[0] == "mmdebstrap"
    assert argv[-5:] == [
        "bookworm",
        "/w/root",
        "deb http://m/debian bookworm main",
        "deb http://m/debian bookworm-updates main",
        "deb http://m/debian-security bookworm-security main",
    ]
    assert "--mode=root" in argv
    assert "--variant=apt" in argv
    assert "--include=linux-image-amd64,systemd,openssh-server,live-boot" in argv
    assert "--skip=download/empty" in argv
    assert "--setup-hook=sync-in '/c/apt archives' /var/cache/apt/archives/" in argv
    hooks = [a.removeprefix("--customize-hook=") for a in argv if a.startswith("--customize")]
    assert "sync-in /w/staged /" in hooks
    assert any("systemctl enable provisioner-agent.service" in h for h in hooks)
    assert 'rm -f "$1"/etc/hostname "$1"/etc/resolv.conf' in hooks
    assert any("authorized_keys" in h and "'ssh-ed25519 AAAA me@x'" in h for h in hooks)
    # The .debs leave the image only after they were saved to the cache.
    assert hooks.index("sync-out /var/cache/apt/archives '/c/apt archives'") < len(hooks) - 1
    assert hooks[-1] == 'rm -f "$1"/var/cache/apt/archives/*.deb'


def test_a_non_root_user_is_created(recipe_dir: Path) -> None:
    recipe = parse_recipe((GOOD + '[[users]]\nname = "ops"\n').encode(), recipe_dir / "r.toml")
    hooks = customize_commands(recipe, Path("/s"))
    assert 'chroot "$1" useradd -m -s /bin/bash ops' in hooks
    assert not any("authorized_keys" in h for h in hooks)


# ------------------------------------------------------------- boot, dpkg, manifest


def test_kernel_release() -> None:
    names = ["config-6.1.0-37-amd64", "vmlinuz-6.1.0-37-amd64", "initrd.img-6.1.0-37-amd64"]
    assert kernel_release(names) == "6.1.0-37-amd64"
    with pytest.raises(ImageError, match="found none"):
        kernel_release(["vmlinuz-6.1.0-37-amd64"])
    with pytest.raises(ImageError, match="expected one"):
        kernel_release([*names, "vmlinuz-6.2", "initrd.img-6.2"])


def test_parse_dpkg_query() -> None:
    assert parse_dpkg_query("zlib1g 1:1.2.13\nbash 5.2.15-2+b8\n\n") == (
        "bash 5.2.15-2+b8",
        "zlib1g 1:1.2.13",
    )


def test_manifest_round_trips() -> None:
    manifest = Manifest(
        name="node",
        suite="bookworm",
        variant="apt",
        mirror="http://m/debian",
        kernel_release="6.1.0-37-amd64",
        packages=("bash 5.2", "systemd 252"),
        vmlinuz=Artifact("vmlinuz", 1, "a" * 64),
        initrd=Artifact("initrd", 2, "b" * 64),
        squashfs=Artifact("root.squashfs", 3, "c" * 64),
        compression="zstd",
        root_bytes=4,
        download_bytes=5,
        mmdebstrap_seconds=6.0,
        built_at="2026-01-01T00:00:00+00:00",
        build_seconds=7.0,
        recipe_sha256="d" * 64,
        builder_version=1,
        provisioner_version="0",
    )
    assert Manifest.from_json(manifest.to_json()) == manifest
    with pytest.raises(ImageError, match="not a valid image manifest"):
        Manifest.from_json('{"name": "x"}')


def test_the_initrd_check_finds_a_module_compressed_or_under_usr() -> None:
    """Debian 13's initrds hold modules as .ko.xz (the check refused a trixie image whose
    netconsole.ko.xz was there: the CI run after issue 22 found it); merged /usr too."""
    from provisioner.image.rootfs import initrd_has

    module = "lib/modules/6.12.118+deb13-amd64/kernel/drivers/net/netconsole.ko"
    assert initrd_has([module + ".xz"], module)
    assert initrd_has(["usr/" + module], module)
    assert initrd_has([module], module)
    assert not initrd_has([module.replace("netconsole", "e1000")], module)
    script = "scripts/init-bottom/provisioner-netconsole"
    assert initrd_has([script], script) and not initrd_has([script + ".xz"], script)
