"""Does a node's NVIDIA driver run the CUDA that a wheelhouse's torch was built for? (pure)

torch's CUDA runtime comes as a wheel (``nvidia-cuda-runtime 13.0.96`` for torch 2.13 on
PyPI; ``nvidia-cuda-runtime-cu12 12.8.90`` for the CUDA 12 builds). The kernel driver does
not: it is what the node's image carries (a layer built from Debian's non-free archive:
``nvidia-kernel-dkms 550.163.01-2`` in debian-trixie-nvidia) or what post-install's driver
step installs (NVIDIA's repository, held to one branch by ``nvidia-driver-pinning-580``).

A CUDA major release runs on any driver from its minimum branch on (minor version
compatibility; newer drivers by backward compatibility). Source: NVIDIA, "CUDA
Compatibility", Minor Version Compatibility, Table 1 (CUDA 13.x >= 580, 12.x >= 525,
11.x >= 450).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MIN_DRIVER = {13: 580, 12: 525, 11: 450}  # CUDA major -> the driver branch it needs

# The wheel that carries libcudart, by the CUDA majors that name it so (PEP 503 names).
RUNTIME_WHEELS = ("nvidia-cuda-runtime", "nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime-cu11")

# Debian packages whose version is the kernel driver's (Debian's non-free archive and
# NVIDIA's repository), in the order they are trusted.
DRIVER_PACKAGES = (
    "nvidia-kernel-dkms",
    "nvidia-open-kernel-dkms",
    "nvidia-kernel-open-dkms",
    "nvidia-driver",
    "nvidia-open",
    "cuda-drivers",
    "libcuda1",
)

_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)")
_BRANCH = re.compile(r"^nvidia-driver-pinning-(\d+)$")


def wheel_cuda(requirements: str) -> str | None:
    """``13.0`` from a requirements.txt that pins ``nvidia-cuda-runtime==13.0.96``; None
    when nothing there carries a CUDA runtime (a CPU wheelhouse)."""
    for line in requirements.splitlines():
        m = _PIN.match(line.strip())
        if m and m.group(1).lower().replace("_", "-") in RUNTIME_WHEELS:
            parts = m.group(2).split(".")
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                return f"{parts[0]}.{parts[1]}"
    return None


def min_driver(cuda: str) -> int | None:
    """The oldest driver branch that runs CUDA ``cuda`` (``13.0`` -> 580); None: unknown."""
    major = cuda.split(".", 1)[0]
    return MIN_DRIVER.get(int(major)) if major.isdigit() else None


def image_driver(packages: Iterable[str]) -> str | None:
    """The driver version an image's manifest lists (``nvidia-kernel-dkms 550.163.01-2``
    -> ``550.163.01``); None when the image carries no NVIDIA driver."""
    found: dict[str, str] = {}
    for entry in packages:
        name, _, version = str(entry).partition(" ")
        if name in DRIVER_PACKAGES and version:
            upstream = version.split(":", 1)[-1].rsplit("-", 1)[0]
            found[name] = upstream
    for name in DRIVER_PACKAGES:
        if name in found:
            return found[name]
    return None


def pinned_branch(packages: Iterable[str]) -> str | None:
    """The branch a driver step holds (``nvidia-driver-pinning-580`` -> ``580``)."""
    for package in packages:
        m = _BRANCH.match(package.strip())
        if m:
            return m.group(1)
    return None


def branch(driver: str) -> int | None:
    """``550.163.01`` -> 550."""
    head = driver.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def problem(
    host: str,
    cuda: str,
    wheelhouse: str,
    driver: str,
    source: str,
    *,
    what: str | None = None,
    remedy: str | None = None,
) -> str | None:
    """Why ``host`` cannot run the wheelhouse's CUDA on its driver, or None when it can (or
    when either number is not one this table knows: nothing is refused on a guess).
    ``what`` and ``remedy`` name another CUDA build (a llama.cpp artifact) and its way out."""
    need = min_driver(cuda)
    have = branch(driver)
    if need is None or have is None or have >= need:
        return None
    what = what or f"torch in {wheelhouse}"
    remedy = remedy or (
        "build the wheelhouse with a torch for an older CUDA "
        "(artifact build vllm --torch-index URL)"
    )
    return (
        f"{host}: {what} is built for CUDA {cuda}, which needs NVIDIA driver "
        f"{need} or newer; {source} gives it {driver}: boot it an image without that driver "
        f"(post-install's driver step installs a {need}+ branch), or {remedy}"
    )


# CUTLASS's Python DSL (vLLM's nvidia-cutlass-dsl[cu13]) comes as one wheel per CUDA major,
# nvidia-cutlass-dsl-libs-cu12 and -cu13 (92 MB of wheel, 235 MB installed, each), and
# loads the newest flavor the node's driver runs (nvidia-cutlass-dsl 4.8.0,
# cutlass/_mlir/_mlir_libs/__init__.py: cuDriverGetVersion; without a driver, the newest
# installed). A set whose CUDA runtime is 13.x needs driver 580+, which runs cu13: its
# older flavors are never loaded.
CUTLASS_FLAVOR = "nvidia-cutlass-dsl-libs-cu"


def unused_flavors(pins: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The CUTLASS DSL flavors of a resolved set (PEP 503 name, version pairs) that no
    node able to run its CUDA runtime loads: those older than the runtime's major, when
    the runtime's own flavor is in the set."""
    found = dict(pins)
    runtime = next((found[n] for n in RUNTIME_WHEELS if n in found), "")
    major = runtime.split(".", 1)[0]
    flavors = {
        int(n[len(CUTLASS_FLAVOR) :]): n
        for n in found
        if n.startswith(CUTLASS_FLAVOR) and n[len(CUTLASS_FLAVOR) :].isdigit()
    }
    if not major.isdigit() or int(major) not in flavors:
        return ()
    return tuple(sorted(n for v, n in flavors.items() if v < int(major)))
