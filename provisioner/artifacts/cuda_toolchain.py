"""CUDA's toolchain from PyPI, for llama.cpp's CUDA builds on a control node without one.

::

    images/toolchains/cuda-13.toml ─ load ─> CudaToolchainRecipe (wheels pinned by sha256)
    pip install --no-deps --require-hashes --only-binary :all: --target <prefix>
        <cache>/toolchains/<name>-<key>/nvidia/cu13  (bin/nvcc, nvvm/, include/, lib/)
    + lib64 -> lib, and lib<x>.so -> lib<x>.so.N for linking (the wheels ship only the
      versioned files)

A build with it passes ``CUDAToolkit_ROOT``, ``CMAKE_CUDA_COMPILER`` and
``GGML_CUDA_NO_VMM=ON`` (no libcuda stub is in the wheels) to cmake, and packs the CUDA
libraries its binaries link (libcudart, libcublas, libcublasLt) into the artifact's
``lib/``: the nodes need only the driver's ``libcuda.so.1``. The recipe says which compute
capabilities its compiler still targets (CUDA 13: 7.5 and newer).

Pure parts: :func:`parse_recipe`, :func:`archs`, :func:`supports`, :func:`cmake_flags`,
:func:`dev_links`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provisioner import data
from provisioner.artifacts import ArtifactError, recipe_file

BUILDER_VERSION = 1
KEYS = frozenset({"name", "backend", "min_compute_capability", "root", "wheels"})
NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
WHEEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][0-9A-Za-z.+-]* --hash=sha256:[0-9a-f]{64}")
ROOT = re.compile(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*")
CAPABILITY = re.compile(r"([0-9]+)\.([0-9])")
ARCH = re.compile(r"([0-9]{2,3})(?:[a-z]|-real|-virtual)?")
VERSIONED = re.compile(r"(lib[A-Za-z0-9_+-]+)\.so\.[0-9]+")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CudaToolchainRecipe:
    name: str
    min_arch: int  # 75 for compute capability 7.5
    root: str  # the toolkit's folder under the install target
    wheels: tuple[str, ...]  # requirement lines, each with its sha256
    source: Path


def recipe_path() -> Path:
    return data.folder("images") / "toolchains" / "cuda-13.toml"


def parse_recipe(text: bytes, source: Path) -> CudaToolchainRecipe:
    """A recipe's bytes, validated; ArtifactError naming the file and key otherwise."""

    raw, fail = recipe_file.read(text, source, KEYS)
    if not isinstance(raw.get("name"), str) or not NAME.fullmatch(raw["name"]):
        raise fail("name", "missing, or not a plain name")
    if raw.get("backend") != "cuda":
        raise fail("backend", "must be cuda")
    capability = CAPABILITY.fullmatch(str(raw.get("min_compute_capability", "")))
    if capability is None:
        raise fail("min_compute_capability", "missing, or not a capability such as 7.5")
    if not isinstance(raw.get("root"), str) or not ROOT.fullmatch(raw["root"]):
        raise fail("root", "missing, or not a relative folder of plain names")
    wheels = raw.get("wheels")
    if not isinstance(wheels, list) or not wheels:
        raise fail("wheels", "missing, or not a list")
    for line in wheels:
        if not isinstance(line, str) or not WHEEL.fullmatch(line):
            raise fail("wheels", f"{line!r}: not 'name==version --hash=sha256:HEX'")
    return CudaToolchainRecipe(
        raw["name"],
        int(capability.group(1)) * 10 + int(capability.group(2)),
        raw["root"],
        tuple(wheels),
        source,
    )


def load(path: Path | None = None) -> CudaToolchainRecipe | None:
    """The shipped recipe (None when there is none)."""
    path = path or recipe_path()
    return parse_recipe(path.read_bytes(), path) if path.is_file() else None


def archs(gpu_arch: str) -> list[int]:
    """CMAKE_CUDA_ARCHITECTURES as numbers: ``75;86-real`` -> [75, 86]."""
    found = []
    for part in gpu_arch.split(";"):
        m = ARCH.fullmatch(part.strip())
        if m is None:
            raise ArtifactError(f"CUDA arch {part!r}: a compute capability such as 86")
        found.append(int(m.group(1)))
    return found


def supports(recipe: CudaToolchainRecipe, gpu_arch: str) -> str | None:
    """None when the recipe's compiler targets every arch, else why not."""
    low = [a for a in archs(gpu_arch) if a < recipe.min_arch]
    if not low:
        return None
    shown = ", ".join(f"{a // 10}.{a % 10}" for a in low)
    least = f"{recipe.min_arch // 10}.{recipe.min_arch % 10}"
    return (
        f"{recipe.source.name} ({recipe.name} from PyPI) compiles for compute capability "
        f"{least} and newer, not {shown}: install a CUDA 12 toolkit on this control node "
        "(nvcc on the PATH)"
    )


def key(recipe: CudaToolchainRecipe) -> str:
    blob = json.dumps([recipe.name, recipe.root, sorted(recipe.wheels), BUILDER_VERSION])
    return hashlib.sha256(blob.encode()).hexdigest()


NVCC_WHEEL = re.compile(r"nvidia-cuda-nvcc(?:-cu[0-9]+)?==([0-9]+)\.([0-9]+)")
NVCC_RELEASE = re.compile(r"release ([0-9]+)\.([0-9]+)")


def cuda_version(recipe: CudaToolchainRecipe) -> str | None:
    """The CUDA release the recipe's nvcc is (``13.5``), from its pinned wheel."""
    for line in recipe.wheels:
        m = NVCC_WHEEL.match(line)
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    return None


def nvcc_release(version_text: str) -> str | None:
    """``nvcc --version``'s release (``Cuda compilation tools, release 12.4, V12.4.131``)."""
    m = NVCC_RELEASE.search(version_text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def system_cuda_version() -> str | None:
    """The release of this machine's own nvcc (``$CUDACXX``, else on the PATH)."""
    nvcc = os.environ.get("CUDACXX") or shutil.which("nvcc")
    if not nvcc:
        return None
    try:
        done = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return nvcc_release(done.stdout)


def describe(recipe: CudaToolchainRecipe) -> str:
    """For an artifact's inputs: the recipe's name and the key of its pinned wheels."""
    return f"{recipe.name} (PyPI) {key(recipe)[:16]}"


def dev_links(names: list[str]) -> dict[str, str]:
    """The unversioned links a linker needs: ``libcudart.so`` -> ``libcudart.so.13`` for
    each versioned library without one (the wheels ship only the versioned files)."""
    have = set(names)
    links: dict[str, str] = {}
    for name in sorted(names):
        m = VERSIONED.fullmatch(name)
        if m and f"{m.group(1)}.so" not in have:
            links.setdefault(f"{m.group(1)}.so", name)
    return links


@dataclass(frozen=True)
class CudaToolchain:
    recipe: CudaToolchainRecipe
    root: Path  # the toolkit tree (bin/nvcc, include, lib)

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    def describe(self) -> str:
        return describe(self.recipe)

    def cmake_flags(self) -> list[str]:
        return cmake_flags(self.root)


def cmake_flags(root: Path) -> list[str]:
    """What points cmake at a toolkit tree from the wheels."""
    return [
        f"-DCUDAToolkit_ROOT={root}",
        f"-DCMAKE_CUDA_COMPILER={root / 'bin' / 'nvcc'}",
        "-DGGML_CUDA_NO_VMM=ON",  # no libcuda stub to link against in the wheels
        # llama-server and the RPC server link libggml-cuda.so, which needs libcublas.so.13;
        # ld finds a library's own needs only on its default paths (ld.so.conf, where a
        # system CUDA is) or -rpath-link: without it, 364 of 366 steps built and the link
        # of llama-server failed on "libcublas.so.13 ... not found" (seen here).
        f"-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,{root / 'lib'}",
    ]


def ensure(recipe: CudaToolchainRecipe, cache: Path, progress: Progress) -> CudaToolchain:
    """The toolchain of ``recipe`` in ``cache/toolchains``, installed by pip if missing."""
    folder = cache / "toolchains"
    final = folder / f"{recipe.name}-{key(recipe)[:16]}"
    made = CudaToolchain(recipe, final / "prefix" / recipe.root)
    if (final / "made").is_file():
        return made
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{final.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "made").is_file():
            return made
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir()
        requirements = final / "requirements.txt"
        requirements.write_text("\n".join(recipe.wheels) + "\n")
        progress(f"installing the {recipe.name} toolchain from PyPI into {final} "
                 f"({len(recipe.wheels)} wheels, pinned by sha256)")  # fmt: skip
        argv = [
            sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--require-hashes",
            "--only-binary", ":all:", "--no-compile", "--target", str(final / "prefix"),
            "-r", str(requirements),
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        nvcc = made.root / "bin" / "nvcc"
        if done.returncode != 0 or not nvcc.is_file():
            shutil.rmtree(final, ignore_errors=True)
            tail = (done.stderr or done.stdout).strip()[-2000:] or f"no {nvcc}"
            raise ArtifactError(f"the {recipe.name} toolchain did not install: {tail}")
        if not (made.root / "lib64").exists():
            (made.root / "lib64").symlink_to("lib")
        for link, target in dev_links([p.name for p in made.lib.iterdir()]).items():
            (made.lib / link).symlink_to(target)
        (final / "made").write_text(key(recipe) + "\n")
        progress(f"{recipe.name} toolchain: {made.root}")
    return made
