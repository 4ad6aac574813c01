"""llama.cpp's CUDA backend built from PyPI's CUDA 13 toolchain (issue 16), for one
architecture (86: the RTX 3060s of cluster 4), and its binaries checked inside a node image
that has no CUDA installed.

Marked heavy: the toolchain is 560 MB of wheels, and compiling ggml-cuda for one
architecture takes far longer than CI's budget on 2 cores. Run it by naming the file:
``pytest tests/e2e/test_cuda_build.py``. No GPU is needed: nothing here runs a kernel.

1. ``provisioner artifact build llama.cpp --backend cuda --gpu-arch 86`` on a control node
   whose PATH has no nvcc installs images/toolchains/cuda-13.toml by pip into the cache
   and builds with it; the manifest names that toolchain and the runtime packages.
2. The artifact carries libcudart, libcublas and libcublasLt in its ``lib/`` and links no
   libcuda (GGML_CUDA_NO_VMM: the driver's library is loaded at run time).
3. Inside the debian-trixie image (unsquashed; no CUDA, no NVIDIA driver), ``ldd`` of every
   shipped binary and library resolves, with at most the driver's ``libcuda.so.1``
   missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from provisioner.image.discovery import default_cache
from provisioner.image.rootfs import build_rootfs
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
DRIVER = "libcuda.so.1"  # the kernel driver's part: on a node, nvidia-driver brings it

pytestmark = pytest.mark.heavy


def test_the_cuda_build_from_pypi_resolves_in_a_node_image_without_cuda(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        unavailable("needs root (mmdebstrap, chroot)")
    store = tmp_path / "artifacts"
    env_path = "/usr/sbin:/usr/bin:/sbin:/bin"  # no nvcc of this machine's own
    started = time.monotonic()
    built = subprocess.run(
        [str(ROOT / ".venv/bin/provisioner"), "artifact", "build", "llama.cpp", "--backend",
         "cuda", "--gpu-arch", "86", "--store", str(store), "--json"],
        capture_output=True, text=True, timeout=14400, check=False,
        env={**os.environ, "PATH": env_path},
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-4000:]
    print(f"CUDA build (arch 86, PyPI toolchain): {time.monotonic() - started:.0f} s")
    manifest = json.loads(built.stdout)
    assert manifest["inputs"]["cuda_toolchain"].startswith("cuda-13 (PyPI) ")
    assert "GGML_CUDA" in manifest["inputs"]["cmake_flags"]
    tarball = store / manifest["file"]
    print(f"artifact: {tarball.stat().st_size / 1e6:.0f} MB; "
          f"runtime packages: {manifest['inputs']['runtime_packages']}")  # fmt: skip

    image = build_rootfs(ROOT / "images" / "debian-trixie.toml", tmp_path / "images",
                         default_cache(), print)  # fmt: skip
    root = tmp_path / "root"
    subprocess.run(
        ["unsquashfs", "-q", "-no-progress", "-d", str(root),
         str(tmp_path / "images" / image.name / "root.squashfs")], check=True,
    )  # fmt: skip
    assert not list(root.glob("usr/lib/x86_64-linux-gnu/libcuda*"))  # no driver, no CUDA
    with tarfile.open(tarball) as tar:
        tar.extractall(root / "opt", filter="data")
    name = manifest["name"]
    libs = sorted(p.name for p in (root / "opt" / name / "lib").iterdir())
    assert {"libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13"} <= set(libs), libs
    cuda_lib = next(p for p in libs if p.startswith("libggml-cuda"))
    needed = subprocess.run(
        ["readelf", "-d", str(root / "opt" / name / "lib" / cuda_lib)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "libcudart.so.13" in needed and DRIVER not in needed
    files = [f"/opt/{name}/bin/{b}" for b in ("llama-server", "rpc-server")]
    files += [f"/opt/{name}/lib/{lib}" for lib in libs]
    missing = []
    for file in files:
        shown = subprocess.run(
            ["chroot", str(root), "ldd", file], capture_output=True, text=True, check=False
        )
        missing += [
            f"{file}: {line.strip()}"
            for line in shown.stdout.splitlines()
            if "not found" in line and not line.strip().startswith(DRIVER)
        ]
    assert not missing, "\n".join(missing)
    shutil.rmtree(root, ignore_errors=True)
