"""Which llama.cpp build each member of a llama-rpc cluster runs: its profile's.

A profile's ``engines.llama-rpc`` block names the backend (``cpu``, ``vulkan``, ``cuda``,
``sycl``, ``hip``), the GPU arch and the CPU baseline: one
:class:`~provisioner.artifacts.llama.BuildSpec`. Members of one profile share one build; a
member of another profile gets its own; a node without a profile (or a profile without the
block) runs the CPU build. ``--option artifact=NAME`` names one build for every member.

``visible_devices`` in the same block picks the GPUs the servers use, through the
backend's own variable (``GGML_VK_VISIBLE_DEVICES``, ``CUDA_VISIBLE_DEVICES``,
``HIP_VISIBLE_DEVICES``). llama.cpp skips CPU-type Vulkan devices unless one is named
there, so a profile whose Vulkan device is Mesa's lavapipe (the lab) names ``"0"``.

A backend whose toolchain this control node lacks is refused at ``cluster create``, with
what is missing, unless the store already holds a build of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from provisioner.artifacts import ArtifactError
from provisioner.artifacts.llama import DEFAULT_CPU_BASELINE, Backend, BuildSpec
from provisioner.artifacts.store import ArtifactStore, Manifest
from provisioner.clusters.spec import ClusterError
from provisioner.profiles import Engine, Profile

ARTIFACT_PREFIX = "llama.cpp-"
VISIBLE_DEVICES_ENV = {
    Backend.VULKAN: "GGML_VK_VISIBLE_DEVICES",
    Backend.CUDA: "CUDA_VISIBLE_DEVICES",
    Backend.HIP: "HIP_VISIBLE_DEVICES",
}
DEVICE_LIST = re.compile(r"[0-9]+(,[0-9]+)*")


@dataclass(frozen=True)
class MemberBuild:
    """What one member runs: the build spec, the profile that chose it, its environment."""

    spec: BuildSpec
    profile: str  # "" when the node has none
    env: Mapping[str, str]

    def describe(self) -> str:
        return f"llama.cpp ({self.spec.backend.value}, {self.spec.target()})"


def member_build(profile: Profile | None) -> MemberBuild:
    """The build a node of ``profile`` runs (ClusterError for settings that make none)."""
    rule = profile.engine_rule(Engine.LLAMA_RPC) if profile else None
    settings = dict(rule.settings) if rule else {}
    name = profile.name if profile else ""
    where = f"profile {name or '(none)'}, engines.llama-rpc"
    try:
        backend = Backend(settings.get("backend", "cpu"))
        spec = BuildSpec(
            backend, settings.get("cpu_baseline", DEFAULT_CPU_BASELINE), settings.get("gpu_arch")
        )
    except (ValueError, ArtifactError) as exc:
        raise ClusterError(f"{where}: {exc}") from exc
    env = {}
    devices = settings.get("visible_devices")
    if devices is not None:
        variable = VISIBLE_DEVICES_ENV.get(backend)
        if variable is None:
            raise ClusterError(f"{where}: visible_devices is for the vulkan, cuda and hip "
                               f"backends, not {backend.value}")  # fmt: skip
        if not DEVICE_LIST.fullmatch(devices):
            raise ClusterError(f"{where}: visible_devices {devices!r}: device numbers, 0,1")
        env[variable] = devices
    return MemberBuild(spec, name, env)


def matches(manifest: Manifest, spec: BuildSpec) -> bool:
    """Is ``manifest`` a llama.cpp build of ``spec``? Its name says so
    (``llama.cpp-<version>-<backend>-<target>``: ``llama.artifact_name``)."""
    suffix = f"-{spec.backend.value}-{spec.target()}".lower()
    return manifest.name.startswith(ARTIFACT_PREFIX) and manifest.name.endswith(suffix)


def newest(store: ArtifactStore, spec: BuildSpec) -> Manifest | None:
    """The newest build of ``spec`` in the store, if any."""
    found = [m for m in store.list() if matches(m, spec)]
    return max(found, key=lambda m: m.built_at) if found else None
