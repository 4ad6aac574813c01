"""Can this control node build a llama.cpp backend? What its toolchain needs, said plainly.

A backend that an ``images/buildroots`` recipe names (Vulkan) is built in that Debian
root: it needs mmdebstrap, unshare and chroot, and root. CUDA takes this machine's
``nvcc`` (or ``$CUDACXX``), else CUDA 13's compiler from PyPI
(:mod:`provisioner.artifacts.cuda_toolchain`, compute capability 7.5 and newer). The
others need their vendor's compiler on the PATH: ROCm's ``hipcc`` (or ``$HIPCXX``),
oneAPI's ``icpx``. The CPU backend needs only what builds the control
node's own packages. Backends are named by their value (``cuda``), so that the build
(:mod:`provisioner.artifacts.llama`) can ask before it downloads anything.
"""

from __future__ import annotations

import os
import shutil

from provisioner.artifacts import ArtifactError, build_root, cuda_toolchain

# The compiler each GPU backend needs on the control node, and what it is.
COMPILERS = {
    "cuda": ("nvcc", "CUDACXX", "CUDA's compiler nvcc (the CUDA toolkit)"),
    "hip": ("hipcc", "HIPCXX", "ROCm's hipcc 6.1 or newer"),
    "sycl": ("icpx", "", "Intel's oneAPI DPC++ compiler icpx"),
}
# Why no Debian build root makes up for a missing compiler (checked against trixie's
# package index and llama.cpp b11434's ggml-hip/CMakeLists.txt, "At least ROCM/HIP V6.1
# is required"; oneAPI is in no Debian suite, nor as a compiler on PyPI).
NO_DEBIAN_ROOT = {
    "hip": "Debian 13's ROCm is too old for llama.cpp's HIP backend (hipcc 5.7.1, rocBLAS "
    "5.5.1, no gfx1151 kernels)",
    "sycl": "no Debian suite ships oneAPI",
}


def system_nvcc() -> bool:
    """Has this machine a CUDA compiler of its own (``nvcc`` on the PATH, ``$CUDACXX``)?"""
    return bool(shutil.which("nvcc") or os.environ.get("CUDACXX"))


def system_cuda() -> str | None:
    """The CUDA release of this machine's own nvcc (``12.4``), if it has one."""
    return cuda_toolchain.system_cuda_version()


def cuda_release() -> str | None:
    """The CUDA release a CUDA build made here now would be (``13.5``): this machine's
    nvcc, else the PyPI toolchain's; None when neither is known."""
    if system_nvcc():
        return system_cuda()
    recipe = cuda_toolchain.load()
    return cuda_toolchain.cuda_version(recipe) if recipe else None


def missing(backend: str, gpu_arch: str | None = None) -> str | None:
    """Why this control node cannot build ``backend`` (``vulkan``; ``cuda`` for
    ``gpu_arch``), or None when it can. CUDA without an nvcc here takes the toolchain from
    PyPI (images/toolchains/cuda-13.toml) when its compiler targets every arch."""
    if backend == "cpu":
        return None
    try:
        recipe = build_root.load_for(backend)
    except ArtifactError as exc:
        return str(exc)
    if recipe is not None:
        return build_root.unusable(recipe)
    if backend not in COMPILERS:
        return f"no toolchain is known here for {backend}"
    if backend == "cuda" and not system_nvcc():
        try:
            cuda = cuda_toolchain.load()
            if cuda is not None:
                return cuda_toolchain.supports(cuda, gpu_arch) if gpu_arch else None
        except ArtifactError as exc:
            return str(exc)
    name, env, what = COMPILERS[backend]
    if shutil.which(name) or (env and os.environ.get(env)):
        return None
    why = f"; {NO_DEBIAN_ROOT[backend]}: the Vulkan backend runs on these GPUs" if (
        backend in NO_DEBIAN_ROOT
    ) else ""  # fmt: skip
    return f"it needs {what}, and this control node has none on its PATH{why}"
