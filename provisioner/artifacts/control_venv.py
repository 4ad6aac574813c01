"""The control node's vLLM venv: a wheelhouse installed on the control node itself.

The control node never serves with vLLM; it runs vLLM's own code to judge served models'
arguments (``postinstall run --dry-run --check-args``:
:func:`provisioner.clusters.engines.vllm_site.argument_report` runs
:mod:`provisioner.postinstall.vllm_argcheck`) and to convert a GGUF file into a Hugging
Face folder (``scripts/gguf_to_hf.py``, which needs the extras,
:data:`~provisioner.artifacts.wheelhouse.CONTROL_EXTRAS`).

:func:`control_venv` makes that venv from a wheelhouse
(:mod:`provisioner.artifacts.wheelhouse`) as a node does, with no index: the node's
pinned wheels (``--no-deps --require-hashes``), then the extras from the same folder::

    $PROVISIONER_CACHE/vllm-venv/
      <sha16 of requirements.txt>/      the venv
        .provisioner-complete           {"requirements_sha256", "extras"}: written last
      <sha16>.lock                      one build of a venv at a time

It is made with the interpreter this one runs on (:func:`base_python`); pip runs
``--isolated``, the user's ``PIP_*`` variables and pip configuration ignored.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from provisioner.artifacts import ArtifactError, default_cache_dir
from provisioner.artifacts.store import write_json_atomic
from provisioner.artifacts.wheel_files import REQUIREMENTS, normalize
from provisioner.artifacts.wheelhouse import CONTROL_EXTRAS, Progress, _pip
from provisioner.image.debs import sha256_file


def base_python() -> Path:
    """The interpreter this one runs on (outside any venv): control venvs are made with it."""
    return Path(getattr(sys, "_base_executable", None) or sys.executable)


def control_venv_root() -> Path:
    """``$PROVISIONER_CACHE/vllm-venv``."""
    return default_cache_dir().parent / "vllm-venv"


def _isolated_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


def control_venv(
    wheelhouse: Path,
    extras: Sequence[str] = CONTROL_EXTRAS,
    *,
    root: Path | None = None,
    progress: Progress = lambda _line: None,
) -> Path:
    """The python of a venv built from ``wheelhouse`` (its folder, or its requirements.txt as
    :meth:`ArtifactStore.path` gives it), plus ``extras`` from the same folder.

    Cached in ``<root>/<sha16 of requirements.txt>/`` (root: ``$PROVISIONER_CACHE/vllm-venv``)
    with a marker naming the extras installed; a missing extra is added to a cached venv."""
    folder = wheelhouse if wheelhouse.is_dir() else wheelhouse.parent
    req = folder / REQUIREMENTS
    if not req.is_file():
        raise ArtifactError(f"{folder}: no {REQUIREMENTS} (not a wheelhouse)")
    digest = sha256_file(req)
    venv = (root or control_venv_root()) / digest[:16]
    python, marker = venv / "bin" / "python", venv / ".provisioner-complete"
    wanted = [normalize(e) for e in extras]
    state = _read_marker(marker, digest)
    if state is not None and set(wanted) <= set(state):
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / f"{digest[:16]}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _read_marker(marker, digest)
        if state is not None and set(wanted) <= set(state):
            return python
        started = time.monotonic()
        pip = [str(python), "-m", "pip", "--isolated", "install", "--no-index", "--no-cache-dir"]
        pip += ["--progress-bar", "off", "--find-links", str(folder)]
        if state is None:
            shutil.rmtree(venv, ignore_errors=True)
            progress(f"making the control venv {venv} with {base_python()}")
            _pip([str(base_python()), "-m", "venv", str(venv)], "venv", progress)
            total = sum(1 for line in req.read_text().splitlines() if line[:1] not in "# ")
            argv = [*pip, "--no-deps", "--require-hashes", "-r", str(req)]
            _pip(argv, "installing", progress, total=total, env=_isolated_env())
            state = []
        todo = [e for e in wanted if e not in state]
        if todo:
            progress(f"adding {' '.join(todo)} to the control venv")
            _pip([*pip, *todo], "extras", progress, env=_isolated_env())
        done = sorted({*state, *wanted})
        write_json_atomic(marker, {"requirements_sha256": digest, "extras": done})
        progress(f"control venv ready in {time.monotonic() - started:.0f}s: {python}")
    return python


def _read_marker(marker: Path, digest: str) -> list[str] | None:
    """The extras a complete venv holds, or None when it is not complete (or not this one)."""
    try:
        data = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("requirements_sha256") != digest:
        return None
    return [str(e) for e in data.get("extras", [])]
