"""Pack a llama.cpp build into its artifact: the binaries, the libraries they link from the
build (and a toolchain's bundled ones), an ``$ORIGIN/../lib`` RPATH; and check the packed
tree runs. Split from :mod:`provisioner.artifacts.llama` (which builds).

Pure: :func:`parse_needed`. The rest reads ELF files with ``readelf`` and writes tarballs.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from provisioner.artifacts import ArtifactError
from provisioner.artifacts.build_root import BuildRoot
from provisioner.artifacts.store import Manifest

SERVER_TARGET = "llama-server"
RPC_LINK = "rpc-server"  # the tarball's stable name for the RPC server, whatever its target


def _readelf(path: Path) -> str:
    done = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ArtifactError(f"readelf -d {path} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


_NEEDED = re.compile(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]")


def parse_needed(readelf_dynamic: str) -> list[str]:
    """The ``NEEDED`` sonames in ``readelf -d`` output."""
    return _NEEDED.findall(readelf_dynamic)


def _libraries(build_dir: Path) -> dict[str, Path]:
    """Every shared library the build made, by file name (symlinks included)."""
    libs: dict[str, Path] = {}
    for p in build_dir.rglob("*.so*"):
        if p.is_file() and ".so" in p.name and "CMakeFiles" not in p.parts:
            libs.setdefault(p.name, p)
    return libs


def _closure(binaries: Iterable[Path], libs: Mapping[str, Path]) -> tuple[list[str], list[str]]:
    """(libraries of the build the binaries need, transitively; system libraries they need)."""
    ours: list[str] = []
    system: set[str] = set()
    todo = list(binaries)
    while todo:
        needed = parse_needed(_readelf(todo.pop()))
        for soname in needed:
            if soname in libs:
                if soname not in ours:
                    ours.append(soname)
                    todo.append(libs[soname])
            else:
                system.add(soname)
    return sorted(ours), sorted(system)


def _tar_add(
    tar: tarfile.TarFile, arcname: str, path: Path | None, mode: int, link: str = ""
) -> None:
    info = tarfile.TarInfo(arcname)
    info.mtime = 0
    info.mode = mode
    if link:
        info.type = tarfile.SYMTYPE
        info.linkname = link
        tar.addfile(info)
        return
    if path is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        return
    info.size = path.stat().st_size
    with path.open("rb") as f:
        tar.addfile(info, f)


def pack(
    name: str,
    build_dir: Path,
    rpc_name: str,
    out: Path,
    bundled: Mapping[str, Path] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Write ``out`` (``name/bin``, ``name/lib``; mtimes 0, so the same build packs to the
    same bytes); returns (binaries by role, system libraries needed). ``bundled``: more
    libraries that go into ``lib/`` when the binaries link them (a toolchain's CUDA
    runtime and cuBLAS), by file name."""
    bins = {}
    for target in (SERVER_TARGET, rpc_name):
        found = [p for p in build_dir.rglob(target) if p.is_file() and os.access(p, os.X_OK)]
        if not found:
            raise ArtifactError(f"the build made no {target} binary under {build_dir}")
        bins[target] = found[0]
    libs = {**(bundled or {}), **_libraries(build_dir)}
    ours, system = _closure(bins.values(), libs)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in ("", "/bin", "/lib"):
            _tar_add(tar, name + folder, None, 0o755)
        for target, path in sorted(bins.items()):
            _tar_add(tar, f"{name}/bin/{target}", path, 0o755)
        if rpc_name != RPC_LINK:
            _tar_add(tar, f"{name}/bin/{RPC_LINK}", None, 0o777, link=rpc_name)
        for soname in ours:
            _tar_add(tar, f"{name}/lib/{soname}", libs[soname].resolve(), 0o644)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    os.replace(tmp, out)
    roles = {"server": f"bin/{SERVER_TARGET}", "rpc": f"bin/{RPC_LINK}"}
    return roles, system


def check_tarball(tarball: Path, manifest: Manifest, root: BuildRoot | None = None) -> None:
    """Unpack elsewhere and run ``llama-server --version`` (chrooted in the build root for a
    build made there): proves the RPATH and the libs."""
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(tarball) as tar:
        tar.extractall(tmp, filter="data")
        server = Path(tmp, manifest.name, manifest.binaries["server"])
        env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
        argv = [str(server), "--version"]
        if root is not None:
            inside = f"/mnt/{manifest.name}/{manifest.binaries['server']}"
            argv = root.command([inside, "--version"], {"/mnt": (Path(tmp), False)})
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise ArtifactError(f"{server.name} --version failed in the packed tree: {done.stderr}")
