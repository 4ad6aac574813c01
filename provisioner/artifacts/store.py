"""The artifact store: one tarball and one JSON manifest per artifact name.

::

    <store>/
      llama.cpp-b11434-cpu-x86-64-v2.tar.gz
      llama.cpp-b11434-cpu-x86-64-v2.json

The manifest is the truth about its tarball (``sha256``, ``size``, ``inputs``); a node
fetches ``<name>.tar.gz`` over HTTP and checks it against the manifest's ``sha256``.
Publishing writes the tarball and then the manifest, each by rename, so a reader never sees
a manifest without its file. :meth:`ArtifactStore.path` maps a name to the file to serve.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from provisioner.artifacts import ArtifactError, ArtifactNotFound

SUFFIX = ".tar.gz"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class Manifest:
    """What the store knows of one artifact. ``inputs`` are plain strings (JSON-safe)."""

    name: str
    file: str
    sha256: str
    size: int
    key: str
    inputs: Mapping[str, str] = field(default_factory=dict)
    binaries: Mapping[str, str] = field(default_factory=dict)  # role -> path in the tarball
    built_at: float = 0.0
    build_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "key": self.key,
            "inputs": dict(self.inputs),
            "binaries": dict(self.binaries),
            "built_at": self.built_at,
            "build_seconds": self.build_seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        try:
            return cls(
                name=str(data["name"]),
                file=str(data["file"]),
                sha256=str(data["sha256"]),
                size=int(data["size"]),
                key=str(data["key"]),
                inputs={str(k): str(v) for k, v in dict(data.get("inputs", {})).items()},
                binaries={str(k): str(v) for k, v in dict(data.get("binaries", {})).items()},
                built_at=float(data.get("built_at", 0.0)),
                build_seconds=float(data.get("build_seconds", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"bad artifact manifest: {exc}") from exc

    def with_name(self, name: str) -> Manifest:
        return replace(self, name=name, file=name + SUFFIX)


def read_manifest(path: Path) -> Manifest:
    try:
        return Manifest.from_json(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: {exc}") from exc


def write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def copy_atomic(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` by way of a temporary file in ``dest``'s folder."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ArtifactStore:
    """The served folder of tarballs and manifests."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _check_name(self, name: str) -> None:
        if not NAME_RE.match(name) or ".." in name:
            raise ArtifactNotFound(f"no artifact {name!r} (bad name)")

    def manifest_path(self, name: str) -> Path:
        self._check_name(name)
        return self.root / f"{name}.json"

    def get(self, name: str) -> Manifest:
        path = self.manifest_path(name)
        if not path.is_file():
            raise ArtifactNotFound(f"no artifact {name!r} in {self.root}")
        return read_manifest(path)

    def path(self, name: str) -> Path:
        """The tarball to serve for ``name`` (or ``name.tar.gz``); raises ArtifactNotFound."""
        if name.endswith(SUFFIX):
            name = name[: -len(SUFFIX)]
        manifest = self.get(name)
        path = self.root / manifest.file
        if not path.is_file():
            raise ArtifactNotFound(f"artifact {name!r}: {path} is missing")
        return path

    def list(self) -> list[Manifest]:
        if not self.root.is_dir():
            return []
        found = []
        for p in sorted(self.root.glob("*.json")):
            if (self.root / (p.stem + SUFFIX)).is_file():
                found.append(read_manifest(p))
        return found

    def publish(self, tarball: Path, manifest: Manifest) -> Manifest:
        """Copy ``tarball`` in as ``manifest.name``; a same-sha256 artifact is left alone."""
        self._check_name(manifest.name)
        final = manifest.with_name(manifest.name)
        dest = self.root / final.file
        mpath = self.manifest_path(final.name)
        if dest.is_file() and mpath.is_file():
            current = read_manifest(mpath)
            if current.sha256 == final.sha256 and current.size == dest.stat().st_size:
                return current
        copy_atomic(tarball, dest)
        write_json_atomic(mpath, final.to_json())
        return final

    def remove(self, name: str) -> None:
        self.get(name)
        (self.root / f"{name}{SUFFIX}").unlink(missing_ok=True)
        self.manifest_path(name).unlink(missing_ok=True)
