"""CUDA's toolchain from PyPI (artifacts/cuda_toolchain.py): the shipped recipe, its
validation, which archs it compiles for, the cmake flags and the linker's links. The
install itself (pip, 560 MB of wheels) and a build with it are the heavy test's
(tests/e2e/test_cuda_build.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from provisioner.artifacts import ArtifactError
from provisioner.artifacts.cuda_toolchain import (
    archs,
    cmake_flags,
    describe,
    dev_links,
    load,
    parse_recipe,
    supports,
)

GOOD = (
    b'name = "cuda-13"\nbackend = "cuda"\nmin_compute_capability = "7.5"\nroot = "nvidia/cu13"\n'
    b'wheels = ["nvidia-cuda-nvcc==13.5.37 --hash=sha256:' + b"a" * 64 + b'"]\n'
)


def test_the_shipped_recipe_pins_cuda_13_s_compiler_runtime_and_cublas() -> None:
    recipe = load()
    assert recipe is not None and recipe.min_arch == 75 and recipe.root == "nvidia/cu13"
    names = {line.split("==")[0] for line in recipe.wheels}
    assert {"nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-runtime", "nvidia-cublas",
            "nvidia-cuda-cccl", "nvidia-cuda-crt"} <= names  # fmt: skip
    assert all("--hash=sha256:" in line for line in recipe.wheels)
    assert describe(recipe).startswith("cuda-13 (PyPI) ")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (GOOD.replace(b'"cuda"', b'"hip"'), "backend"),
        (GOOD.replace(b'"7.5"', b'"seven"'), "min_compute_capability"),
        (GOOD.replace(b'"nvidia/cu13"', b'"../etc"'), "root"),
        (GOOD.replace(b" --hash=sha256:" + b"a" * 64, b""), "wheels"),
        (GOOD + b"extra = 1\n", "extra"),
    ],
)
def test_a_bad_recipe_is_refused_with_its_file_and_key(text: bytes, key: str) -> None:
    with pytest.raises(ArtifactError, match=rf"cuda\.toml: {re.escape(key)}: "):
        parse_recipe(text, Path("/x/cuda.toml"))


def test_archs_and_what_cuda_13_still_compiles_for() -> None:
    recipe = parse_recipe(GOOD, Path("cuda-13.toml"))
    assert archs("75;86-real;89") == [75, 86, 89]
    assert supports(recipe, "86") is None and supports(recipe, "75;89") is None
    why = supports(recipe, "61;70;86")
    assert why is not None and "7.5 and newer, not 6.1, 7.0" in why
    with pytest.raises(ArtifactError, match="compute capability"):
        archs("sm86")


def test_cmake_points_at_the_wheels_tree_without_the_driver() -> None:
    flags = cmake_flags(Path("/c/tk/nvidia/cu13"))
    assert "-DCUDAToolkit_ROOT=/c/tk/nvidia/cu13" in flags
    assert "-DCMAKE_CUDA_COMPILER=/c/tk/nvidia/cu13/bin/nvcc" in flags
    assert "-DGGML_CUDA_NO_VMM=ON" in flags  # no libcuda stub to link against
    # the executables find libggml-cuda's own needs (libcublas.so.13) in the wheels' tree
    assert "-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,/c/tk/nvidia/cu13/lib" in flags


def test_the_linker_gets_an_unversioned_link_for_each_library() -> None:
    names = [
        "libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libnvvm.so.4",
        "libnvrtc-builtins.so.13.5", "libcudart_static.a", "libfoo.so", "libfoo.so.2",
    ]  # fmt: skip
    assert dev_links(names) == {
        "libcudart.so": "libcudart.so.13",
        "libcublas.so": "libcublas.so.13",
        "libcublasLt.so": "libcublasLt.so.13",
        "libnvvm.so": "libnvvm.so.4",
    }
