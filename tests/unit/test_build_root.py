"""Debian build roots (artifacts/build_root.py): recipes, the mmdebstrap and chroot lines,
and which package ships each linked library. The root itself is made by the e2e test
that builds the Vulkan backend (tests/e2e/test_layer_lab.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner.artifacts import ArtifactError
from provisioner.artifacts.build_root import (
    chroot_argv,
    load_for,
    mmdebstrap_argv,
    parse_dpkg_search,
    parse_recipe,
    providers,
    root_key,
)

GOOD = b'name = "trixie-vulkan"\nsuite = "trixie"\nbackends = ["vulkan"]\npackages = ["g++"]\n'


def test_the_shipped_recipe_builds_vulkan_in_trixie_and_nothing_builds_cpu() -> None:
    recipe = load_for("vulkan")
    assert recipe is not None and recipe.suite == "trixie"
    assert {"libvulkan-dev", "glslc", "spirv-headers", "cmake", "g++"} <= set(recipe.packages)
    assert load_for("cpu") is None  # the control node builds it itself


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (b"name = ", "(file)"),
        (GOOD + b"extra = 1\n", "extra"),
        (GOOD.replace(b'"trixie"', b'"Trixie Stable"'), "suite"),
        (GOOD.replace(b'["g++"]', b"[]"), "packages"),
        (GOOD.replace(b'["g++"]', b'["g++; rm -rf /"]'), "packages"),
        (GOOD.replace(b'backends = ["vulkan"]\n', b""), "backends"),
    ],
)
def test_a_bad_recipe_is_refused_with_its_file_and_key(text: bytes, key: str) -> None:
    with pytest.raises(ArtifactError, match=rf"br\.toml: {re.escape(key)}: "):
        parse_recipe(text, Path("/x/br.toml"))


def test_two_recipes_for_one_backend_are_refused(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.toml").write_bytes(GOOD.replace(b"trixie-vulkan", name.encode()))
    with pytest.raises(ArtifactError, match="more than one build root"):
        load_for("vulkan", tmp_path)
    assert load_for("cuda", tmp_path) is None


def test_the_key_follows_the_packages_and_the_mirror_not_their_order() -> None:
    a = parse_recipe(GOOD.replace(b'["g++"]', b'["g++", "cmake"]'), Path("a.toml"))
    b = parse_recipe(GOOD.replace(b'["g++"]', b'["cmake", "g++"]'), Path("a.toml"))
    assert root_key(a, "http://m/debian") == root_key(b, "http://m/debian")
    assert root_key(a, "http://m/debian") != root_key(a, "http://other/debian")


def test_mmdebstrap_makes_an_apt_root_of_the_suite_with_the_packages() -> None:
    recipe = parse_recipe(GOOD.replace(b'["g++"]', b'["g++", "glslc"]'), Path("a.toml"))
    argv = mmdebstrap_argv(recipe, "http://deb.debian.org/debian", Path("/c/r"), Path("/c/a"))
    assert argv[:4] == ["mmdebstrap", "--mode=root", "--variant=apt", "--format=directory"]
    assert "--include=g++,glslc" in argv
    assert "--setup-hook=sync-in /c/a /var/cache/apt/archives/" in argv
    tail = argv[argv.index("trixie") :]
    assert tail[:2] == ["trixie", "/c/r"]
    assert "deb http://deb.debian.org/debian trixie main" in tail
    assert "deb http://deb.debian.org/debian-security trixie-security main" in tail


def test_the_chroot_line_binds_in_a_private_namespace_the_source_read_only() -> None:
    argv = chroot_argv(
        Path("/c/root"),
        {"/src": (Path("/t/src dir"), False), "/build": (Path("/t/b"), True)},
        ["cmake", "--build", "/build"],
    )
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    script = argv[argv.index("-c") + 1]
    assert "mount --bind '/t/src dir' /c/root/src" in script
    assert "mount -o remount,bind,ro /c/root/src" in script
    assert "mount -o remount,bind,ro /c/root/build" not in script
    assert "mount -t proc proc /c/root/proc" in script
    assert argv[-3:] == ["cmake", "--build", "/build"]
    assert "env" in argv and "-i" in argv  # the host's environment stays outside
    with pytest.raises(ArtifactError, match="absolute path"):
        chroot_argv(Path("/r"), {"../etc": (Path("/t"), True)}, ["true"])


def test_the_package_of_each_library_native_multiarch_first() -> None:
    text = (
        "libc6-i386: /lib32/libc.so.6\n"
        "libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6\n"
        "libvulkan1:amd64: /usr/lib/x86_64-linux-gnu/libvulkan.so.1\n"
        "libvulkan-dev:amd64: /usr/lib/x86_64-linux-gnu/libvulkan.so\n"
        "dpkg-query: no path found matching pattern */libnope.so.1\n"
    )
    found = parse_dpkg_search(
        text, ["libc.so.6", "libvulkan.so.1", "libnope.so.1"], "x86_64-linux-gnu"
    )
    assert found == {"libc.so.6": "libc6", "libvulkan.so.1": "libvulkan1"}


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg")
def test_this_machine_s_dpkg_names_libc_and_refuses_a_library_nobody_ships() -> None:
    libc = subprocess.run(["dpkg-query", "-S", "*/libc.so.6"], capture_output=True, text=True)
    if libc.returncode != 0:
        pytest.skip("no libc.so.6 in this machine's dpkg database")
    assert providers(["libc.so.6"]) == {"libc.so.6": "libc6"}
    with pytest.raises(ArtifactError, match=r"no Debian package ships libnot-here\.so\.9"):
        providers(["libc.so.6", "libnot-here.so.9"])
