"""Which llama.cpp build a member runs (clusters/engines/llama_builds.py), from the
shipped profiles and from profiles written here."""

from __future__ import annotations

import pytest

from provisioner.artifacts.llama import Backend, BuildSpec
from provisioner.artifacts.store import Manifest
from provisioner.artifacts.toolchain import missing as toolchain_missing
from provisioner.clusters.engines.llama_builds import (
    matches,
    member_build,
)
from provisioner.clusters.spec import ClusterError
from provisioner.config import DEFAULT_HWPROFILES
from provisioner.profiles import Profile, load_profiles, parse_profile

SHIPPED = {p.name: p for p in load_profiles(DEFAULT_HWPROFILES)}


def test_each_shipped_profile_names_its_accelerator_s_build() -> None:
    specs = {name: member_build(p).spec for name, p in SHIPPED.items()}
    assert specs["amd-ryzen-ai-npu"].backend is Backend.VULKAN
    assert specs["nvidia-v100s"] == BuildSpec(Backend.CUDA, gpu_arch="70")
    assert specs["nvidia-p40"] == BuildSpec(Backend.CUDA, gpu_arch="61")
    assert specs["generic-cpu"] == specs["qemu-lab"] == BuildSpec()
    assert member_build(None).spec == BuildSpec() and member_build(None).env == {}


def profile(engines: str) -> Profile:
    text = (
        "name: lab-gpu\nversion: 1\ndescription: d\nsources: [s]\nmatch: {}\n"
        f"engines:\n  llama-rpc:\n{engines}"
    )
    parsed, problems = parse_profile(text, "p.yaml")
    assert parsed is not None, problems
    return parsed


def test_visible_devices_go_to_the_backend_s_own_variable() -> None:
    lab = profile('    backend: vulkan\n    visible_devices: "0"\n')
    build = member_build(lab)
    assert build.env == {"GGML_VK_VISIBLE_DEVICES": "0"}
    assert build.describe() == "llama.cpp (vulkan, x86-64-v2)"
    cuda = profile('    backend: cuda\n    gpu_arch: "86"\n    visible_devices: "0,1"\n')
    assert member_build(cuda).env == {"CUDA_VISIBLE_DEVICES": "0,1"}


@pytest.mark.parametrize(
    ("engines", "reason"),
    [
        ('    backend: cpu\n    visible_devices: "0"\n', "not cpu"),
        ('    backend: vulkan\n    visible_devices: "all; rm"\n', "device numbers"),
        ("    backend: metal\n", "'metal' is not a valid Backend"),
        ("    backend: cuda\n", "needs a GPU arch"),
    ],
)
def test_settings_that_make_no_build_are_refused_naming_the_profile(
    engines: str, reason: str
) -> None:
    bad = profile(engines)
    with pytest.raises(ClusterError, match=f"profile lab-gpu, engines.llama-rpc: .*{reason}"):
        member_build(bad)


def test_a_build_is_known_by_its_name() -> None:
    def named(name: str) -> Manifest:
        return Manifest(name, f"{name}.tar.gz", "0" * 64, 1, "k")

    vulkan = BuildSpec(Backend.VULKAN)
    assert matches(named("llama.cpp-b11434-vulkan-x86-64-v2"), vulkan)
    assert not matches(named("llama.cpp-b11434-cpu-x86-64-v2"), vulkan)
    assert not matches(named("llama.cpp-b11434-vulkan-x86-64-v3"), vulkan)
    assert matches(named("llama.cpp-b1-cuda-70-x86-64-v2"), BuildSpec(Backend.CUDA, gpu_arch="70"))
    assert not matches(named("vllm-0.32.0-cuda"), BuildSpec(Backend.CUDA, gpu_arch="70"))


def test_a_missing_toolchain_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CUDACXX", raising=False)
    assert toolchain_missing("cpu") is None
    why = toolchain_missing("cuda", "70")  # CUDA 13 from PyPI: 7.5 and newer
    assert why is not None and "not 7.0" in why and "CUDA 12 toolkit" in why
    assert toolchain_missing("cuda", "86") is None  # PyPI's CUDA 13 builds it
    why = toolchain_missing("sycl")
    assert why is not None and "icpx" in why and "no Debian suite ships oneAPI" in why
    monkeypatch.delenv("HIPCXX", raising=False)
    why = toolchain_missing("hip")  # Debian 13's ROCm (5.7) is below llama.cpp's HIP 6.1
    assert why is not None and "hipcc 6.1 or newer" in why and "hipcc 5.7.1" in why
    assert "the Vulkan backend runs on these GPUs" in why
    why = toolchain_missing("vulkan")  # its build root needs mmdebstrap
    assert why is not None and "trixie-vulkan.toml" in why and "mmdebstrap" in why
    monkeypatch.setenv("CUDACXX", "/opt/cuda/bin/nvcc")
    assert toolchain_missing("cuda", "70") is None  # this machine's own nvcc
