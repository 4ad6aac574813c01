"""Can this control node build a llama.cpp backend? What its toolchain needs, said plainly.

A backend that an ``images/buildroots`` recipe names (Vulkan) is built in that Debian
root: it needs mmdebstrap, unshare and chroot, and root. The others need their vendor's
compiler on the PATH: CUDA's ``nvcc`` (or ``$CUDACXX``), ROCm's ``hipcc`` (or
``$HIPCXX``), oneAPI's ``icpx``. The CPU backend needs only what builds the control
node's own packages. Backends are named by their value (``cuda``), so that the build
(:mod:`provisioner.artifacts.llama`) can ask before it downloads anything.
"""

from __future__ import annotations

import os
import shutil

from provisioner.artifacts import ArtifactError, build_root

# The compiler each GPU backend needs on the control node, and what it is.
COMPILERS = {
    "cuda": ("nvcc", "CUDACXX", "CUDA's compiler nvcc (the CUDA toolkit)"),
    "hip": ("hipcc", "HIPCXX", "ROCm's hipcc"),
    "sycl": ("icpx", "", "Intel's oneAPI DPC++ compiler icpx"),
}


def missing(backend: str) -> str | None:
    """Why this control node cannot build ``backend`` (``vulkan``), or None when it can."""
    if backend == "cpu":
        return None
    try:
        recipe = build_root.load_for(backend)
    except ArtifactError as exc:
        return str(exc)
    if recipe is not None:
        for tool in ("mmdebstrap", "unshare", "chroot"):
            if shutil.which(tool) is None:
                return f"its build root ({recipe.source.name}) needs {tool}, not installed here"
        if os.geteuid() != 0:
            return f"its build root ({recipe.source.name}) is made and used as root"
        return None
    if backend not in COMPILERS:
        return f"no toolchain is known here for {backend}"
    name, env, what = COMPILERS[backend]
    if shutil.which(name) or (env and os.environ.get(env)):
        return None
    return f"it needs {what}, and this control node has none on its PATH"
