"""Debian build roots: where a backend is built whose toolchain the control node's own
release cannot give (llama.cpp's Vulkan backend needs Debian 13's Vulkan headers).

::

    images/buildroots/<name>.toml ─ load_for ─> BuildRootRecipe (suite, packages, backends)
    mmdebstrap --mode=root --variant=apt <suite>  ->  <cache>/buildroots/<name>-<key>/root
        key: sha256 of (recipe, mirror, builder version); made once, kept; .debs in
        <cache>/buildroots/apt-archives (a re-made root downloads nothing)
    BuildRoot.command(argv, binds)  ->  unshare --mount: bind mounts, /proc, chroot, argv

The bind mounts live in a private mount namespace that ends with the command: nothing
stays mounted on the control node, whatever the build does. The root's package list
(name and version of each) is part of an artifact's inputs, so a root re-made with newer
packages makes new artifacts. :func:`providers` names the Debian package of each shared
library a build links (``dpkg-query -S`` against the root's own dpkg database): the
artifact's runtime packages, which post-install installs from the node image's suite.

Pure parts: :func:`parse_recipe`, :func:`root_key`, :func:`mmdebstrap_argv`,
:func:`chroot_argv`, :func:`parse_dpkg_search`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from provisioner import data
from provisioner.artifacts import ArtifactError, recipe_file
from provisioner.image.rootfs_recipe import default_mirror, sources_lines

BUILDER_VERSION = 1  # bump when the root's layout or the mmdebstrap line changes
KEYS = frozenset({"name", "suite", "backends", "packages"})
NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
ENV = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildRootRecipe:
    name: str
    suite: str
    backends: tuple[str, ...]
    packages: tuple[str, ...]
    source: Path


def recipes_dir() -> Path:
    return data.folder("images") / "buildroots"


def parse_recipe(text: bytes, source: Path) -> BuildRootRecipe:
    """A recipe's bytes, validated; ArtifactError naming the file and key otherwise."""

    raw, fail = recipe_file.read(text, source, KEYS)
    for key in ("name", "suite"):
        if not isinstance(raw.get(key), str) or not NAME.fullmatch(raw[key]):
            raise fail(key, "missing, or not a plain name")
    lists: dict[str, tuple[str, ...]] = {}
    for key, pattern in (("backends", NAME), ("packages", PACKAGE)):
        value = raw.get(key)
        if not isinstance(value, list) or not value:
            raise fail(key, "missing, or not a list of names")
        for item in value:
            if not isinstance(item, str) or not pattern.fullmatch(item):
                raise fail(key, f"{item!r} is not a name")
        lists[key] = tuple(value)
    return BuildRootRecipe(raw["name"], raw["suite"], lists["backends"], lists["packages"], source)


def load_for(backend: str, folder: Path | None = None) -> BuildRootRecipe | None:
    """The recipe that builds ``backend``, or None (the control node builds it itself)."""
    folder = folder or recipes_dir()
    found = []
    for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
        recipe = parse_recipe(path.read_bytes(), path)
        if backend in recipe.backends:
            found.append(recipe)
    if len(found) > 1:
        names = ", ".join(str(r.source) for r in found)
        raise ArtifactError(f"backend {backend}: more than one build root names it ({names})")
    return found[0] if found else None


def root_key(recipe: BuildRootRecipe, mirror: str) -> str:
    blob = json.dumps(
        [recipe.name, recipe.suite, sorted(recipe.packages), mirror, BUILDER_VERSION]
    ).encode()
    return hashlib.sha256(blob).hexdigest()


def mmdebstrap_argv(
    recipe: BuildRootRecipe, mirror: str, target: Path, archives: Path
) -> list[str]:
    """mmdebstrap for the root: apt variant (a build needs apt's world: g++, cmake...),
    main only, the .debs synced in from ``archives`` and out again."""
    q = shlex.quote
    return [
        "mmdebstrap", "--mode=root", "--variant=apt", "--format=directory",
        f"--include={','.join(recipe.packages)}",
        "--skip=download/empty",
        '--aptopt=Acquire::Languages "none"',
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {q(str(archives))} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {q(str(archives))}",
        '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
        recipe.suite, str(target),
        *sources_lines(mirror, recipe.suite, ("main",), True),
    ]  # fmt: skip


def chroot_argv(
    root: Path, binds: Mapping[str, tuple[Path, bool]], argv: Sequence[str]
) -> list[str]:
    """``argv`` run chrooted in ``root`` in a private mount namespace, with ``binds``
    (path in the root -> (host path, writable)) and /proc mounted; the mounts end with it."""
    q = shlex.quote
    lines = ["set -eu"]
    for inside, (host, writable) in sorted(binds.items()):
        if not inside.startswith("/") or ".." in inside.split("/"):
            raise ArtifactError(f"bind target {inside!r}: an absolute path without '..'")
        target = q(f"{root}{inside}")
        lines += [f"mkdir -p {target}", f"mount --bind {q(str(host))} {target}"]
        if not writable:
            lines.append(f"mount -o remount,bind,ro {target}")
    lines += [f"mount -t proc proc {q(str(root / 'proc'))}", f'exec chroot {q(str(root))} "$@"']
    return ["unshare", "--mount", "--propagation", "private",
            "sh", "-c", "\n".join(lines), "sh", "env", "-i", *ENV, *argv]  # fmt: skip


def multiarch() -> str:
    """The Debian multiarch triplet of this machine (x86_64-linux-gnu)."""
    machine = platform.machine()
    return {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(
        machine, f"{machine}-linux-gnu"
    )


def parse_dpkg_search(text: str, sonames: Iterable[str], triplet: str) -> dict[str, str]:
    """soname -> the package that ships it, from ``dpkg-query -S`` lines
    (``libvulkan1:amd64: /usr/lib/x86_64-linux-gnu/libvulkan.so.1``); the native
    multiarch folder wins over other copies (lib32, i386)."""
    wanted = set(sonames)
    found: dict[str, tuple[int, str]] = {}
    for line in text.splitlines():
        owners, sep, path = line.partition(": ")
        if not sep or not path.startswith("/") or path.rsplit("/", 1)[-1] not in wanted:
            continue
        soname = path.rsplit("/", 1)[-1]
        rank = 0 if f"/{triplet}/" in path else 1
        package = owners.split(",")[0].strip().split(":")[0]
        if soname not in found or rank < found[soname][0]:
            found[soname] = (rank, package)
    return {soname: package for soname, (_, package) in found.items()}


def providers(sonames: Sequence[str], admindir: Path | None = None) -> dict[str, str]:
    """soname -> Debian package, from the dpkg database at ``admindir`` (a build root's)
    or this machine's; ArtifactError naming the libraries no package ships."""
    if not sonames:
        return {}
    argv = ["dpkg-query", *([f"--admindir={admindir}"] if admindir else []), "-S"]
    done = subprocess.run(
        [*argv, *(f"*/{s}" for s in sonames)], capture_output=True, text=True, check=False
    )
    found = parse_dpkg_search(done.stdout, sonames, multiarch())
    lost = [s for s in sonames if s not in found]
    if lost:
        raise ArtifactError(f"no Debian package ships {', '.join(lost)} "
                            f"({'the build root' if admindir else 'this machine'}): "
                            "the nodes could not get it")  # fmt: skip
    return found


@dataclass(frozen=True)
class BuildRoot:
    """A made root: ``path`` is the root folder."""

    recipe: BuildRootRecipe
    path: Path
    key: str

    @property
    def admindir(self) -> Path:
        return self.path / "var/lib/dpkg"

    def packages_digest(self) -> str:
        listing = subprocess.run(
            ["dpkg-query", f"--admindir={self.admindir}", "-W", "-f", "${Package} ${Version}\n"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return hashlib.sha256("\n".join(sorted(listing.splitlines())).encode()).hexdigest()

    def describe(self) -> str:
        """For the artifact's inputs: name, suite, the digest of its package list."""
        return f"{self.recipe.name} ({self.recipe.suite}) {self.packages_digest()[:16]}"

    def command(
        self, argv: Sequence[str], binds: Mapping[str, tuple[Path, bool]] | None = None
    ) -> list[str]:
        return chroot_argv(self.path, binds or {}, argv)

    def compiler(self) -> str:
        done = subprocess.run(
            ["chroot", str(self.path), "c++", "--version"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        first = done.stdout.splitlines()[:1]
        return first[0].strip() if done.returncode == 0 and first else "unknown"


def unusable(recipe: BuildRootRecipe) -> str | None:
    """Why this machine cannot make or use the root (a tool missing, not root), or None."""
    for tool in ("mmdebstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            return f"its build root ({recipe.source.name}) needs {tool}, not installed here"
    if os.geteuid() != 0:
        return f"its build root ({recipe.source.name}) is made and used as root"
    return None


def ensure(
    recipe: BuildRootRecipe, cache: Path, progress: Progress, mirror: str | None = None
) -> BuildRoot:
    """The root of ``recipe`` in ``cache/buildroots``, made with mmdebstrap if missing
    (one maker at a time: a lock per key). Needs root (mmdebstrap --mode=root, chroot)."""
    mirror = mirror or default_mirror()
    key = root_key(recipe, mirror)
    folder = cache / "buildroots"
    final = folder / f"{recipe.name}-{key[:16]}"
    made = BuildRoot(recipe, final / "root", key)
    if (final / "made").is_file():
        return made
    why = unusable(recipe)
    if why is not None:
        raise ArtifactError(why)
    folder.mkdir(parents=True, exist_ok=True)
    archives = folder / "apt-archives"
    archives.mkdir(exist_ok=True)
    with (folder / f"{key[:16]}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "made").is_file():
            return made
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir()
        progress(f"making the build root {recipe.name}: mmdebstrap {recipe.suite} "
                 f"from {mirror} ({', '.join(recipe.packages)})")  # fmt: skip
        argv = mmdebstrap_argv(recipe, mirror, final / "root", archives)
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            shutil.rmtree(final, ignore_errors=True)
            tail = (done.stderr or done.stdout).strip()[-2000:]
            raise ArtifactError(f"mmdebstrap of the build root {recipe.name} failed: {tail}")
        (final / "made").write_text(key + "\n")
        progress(f"build root {recipe.name}: {final / 'root'}")
    return made
