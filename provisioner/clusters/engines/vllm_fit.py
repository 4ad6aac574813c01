"""Will the cluster's built wheelhouse run on its members? (for :mod:`.vllm`)

Two things are known once the wheelhouse is built, and both are checked at ``cluster
create`` and again by the post-install plan, before any node is touched:

- its torch's CUDA against each GPU member's NVIDIA driver (:mod:`provisioner.artifacts.
  cuda_driver`: CUDA 13.0 needs driver 580 or newer);
- its venv and the served models against the RAM of each member without a cache disk
  (:mod:`provisioner.artifacts.venv_size`: the CUDA set for vLLM 0.32.0 makes a 9 GB venv).

Before the wheelhouse is built nothing is known, and nothing is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provisioner.artifacts import ArtifactError, ArtifactNotFound, cuda_driver, venv_size
from provisioner.artifacts.store import ArtifactStore
from provisioner.artifacts.wheel_files import parse_wheel_filename
from provisioner.artifacts.wheelhouse import INSTALLED
from provisioner.clusters.engines.vllm_site import newest_wheelhouse, runtime
from provisioner.config import Config
from provisioner.errors import ModelError
from provisioner.models.store import ModelStore
from provisioner.postinstall import vllm
from provisioner.records import Cluster


@dataclass(frozen=True)
class Built:
    """What the built wheelhouse says of itself."""

    name: str
    cuda: str | None  # the CUDA its torch is built for; None: a CPU set
    installed: int | None  # the bytes of a node's venv made from it; None: not known
    size: int = 0  # the wheels' bytes: pip holds them all while it installs


def built(cfg: Config, cluster: Cluster, found: Sequence[vllm.VllmMember]) -> Built | None:
    """The wheelhouse the cluster would install (its own, or the newest for its members'
    backend and Python), if one is built."""
    store = ArtifactStore(cfg.state_dir / "artifacts")
    name = cluster.options.get("artifact")
    try:
        manifest = store.get(name) if name else newest_wheelhouse(store, *runtime(found))
        if manifest is None:
            return None
        requirements = store.root / manifest.file
        text = requirements.read_text(encoding="utf-8")
    except (OSError, ArtifactNotFound):
        return None
    installed = manifest.inputs.get(INSTALLED)
    if installed is None or not installed.isdigit():  # built before the manifest said
        installed = _measure(requirements, text)
    return Built(
        manifest.name, cuda_driver.wheel_cuda(text), int(installed) if installed else None,
        manifest.size,
    )  # fmt: skip


def _measure(requirements: Path, text: str) -> str | None:
    """The venv's size from the wheels ``requirements.txt`` lists, beside it."""
    listed = {line.split("==", 1)[0].strip() for line in text.splitlines() if "==" in line}
    wheels = [
        p for p in requirements.parent.glob("*.whl")
        if parse_wheel_filename(p.name)[0] in listed
    ]  # fmt: skip
    try:
        return str(venv_size.installed_bytes(wheels)) if wheels else None
    except ArtifactError:
        return None


def model_bytes(cfg: Config, cluster: Cluster) -> int:
    """The bytes of every model the cluster serves (each once): what a node fetches."""
    store = ModelStore(cfg.state_dir / "models")
    total = 0
    for name in {s.model for s in cluster.served()}:
        try:
            total += store.get(name).size
        except ModelError:
            continue  # refused elsewhere: no such model
    return total


def problems(cfg: Config, cluster: Cluster, found: Sequence[vllm.VllmMember]) -> list[str]:
    """Why the built wheelhouse would not run on some member; [] when none is built."""
    wheelhouse = built(cfg, cluster, found)
    if wheelhouse is None:
        return []
    return vllm.driver_problems(found, wheelhouse.cuda, wheelhouse.name) + vllm.ram_problems(
        found, wheelhouse.installed, model_bytes(cfg, cluster), wheelhouse.name, wheelhouse.size
    )
