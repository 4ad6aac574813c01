"""What a venv made from a wheelhouse takes on a node: on its cache disk, or in its RAM.

A stateless node keeps everything post-install writes in the tmpfs over its image, so a
vLLM venv is held in RAM unless the node has a cache disk (``node disk init``; the venv
lives under ``/var/lib/provisioner``, which the disk holds).

The size is read from the wheels themselves (their zip directories: no unpacking): the
files' unpacked bytes, plus the ``.pyc`` files pip compiles at install, about 1.27 times
the ``.py`` bytes, plus pip itself in the venv. Measured here: the CUDA set for vLLM 0.32.0
on Python 3.13 (200 wheels, 4033 MB) unpacks to 8511 MB, 410 MB of it ``.py``; the venv
pip made from it on debian-trixie took 9034 MB (``du -sb``). This estimate gives 9060 MB.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path

from provisioner.artifacts import ArtifactError

PYC_PER_PY = 1.3  # .pyc bytes per .py byte pip compiles (1.27 measured; rounded up)
VENV_BASE = 15 << 20  # pip and the venv's own files (python3 -m venv with ensurepip)


def wheel_contents(path: Path) -> tuple[int, int]:
    """(unpacked bytes, of which ``.py``) of one wheel, from its zip directory."""
    try:
        with zipfile.ZipFile(path) as wheel:
            infos = wheel.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path}: not a readable wheel: {exc}") from exc
    unpacked = sum(i.file_size for i in infos)
    python = sum(i.file_size for i in infos if i.filename.endswith(".py"))
    return unpacked, python


def installed_bytes(wheels: Iterable[Path]) -> int:
    """The bytes a venv with these wheels installed takes (see the module's measure)."""
    unpacked = python = 0
    for path in wheels:
        u, p = wheel_contents(path)
        unpacked += u
        python += p
    return unpacked + int(python * PYC_PER_PY) + VENV_BASE
