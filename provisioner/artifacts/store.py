"""The artifact store: one JSON manifest per artifact name, beside a tarball or a folder.

::

    <store>/
      llama.cpp-b11434-cpu-x86-64-v2.tar.gz     kind "tarball" (the default)
      llama.cpp-b11434-cpu-x86-64-v2.json
      vllm-0.32.0-cpu-cp311/                    kind "wheelhouse": wheels, requirements.txt,
      vllm-0.32.0-cpu-cp311.json                  index.html (file: ".../requirements.txt")

The manifest is the truth about its artifact (``sha256`` of ``file``, ``size``, ``inputs``);
a node fetches ``file`` over HTTP and checks it against the manifest's ``sha256`` (for a
wheelhouse, requirements.txt, whose lines hash every wheel). Publishing writes the tarball
or the folder and then the manifest, each by rename, so a reader never sees a manifest
without its file; removing drops the manifest first. :meth:`ArtifactStore.path` maps a name
to the file ``file`` names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from provisioner.artifacts import ArtifactError, ArtifactNotFound

SUFFIX = ".tar.gz"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class ArtifactKind(StrEnum):
    TARBALL = "tarball"  # <name>.tar.gz
    WHEELHOUSE = "wheelhouse"  # <name>/ (wheels, requirements.txt, index.html)


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
    kind: ArtifactKind = ArtifactKind.TARBALL

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
            "kind": self.kind.value,
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
                kind=ArtifactKind(str(data.get("kind", ArtifactKind.TARBALL.value))),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"bad artifact manifest: {exc}") from exc

    def with_name(self, name: str) -> Manifest:
        if self.kind is ArtifactKind.WHEELHOUSE:
            return replace(self, name=name, file=f"{name}/{PurePosixPath(self.file).name}")
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


def _published_files(folder: Path) -> dict[str, int]:
    """A folder artifact's files (dot files left out) and their sizes."""
    return {
        p.name: p.stat().st_size
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".")
    }


def replace_tree(src: Path, dest: Path) -> None:
    """Make ``dest`` hold ``src``'s files (hard links where the filesystem allows, else
    copies): built beside it, then renamed into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        os.chmod(tmp, 0o755)
        for name in sorted(_published_files(src)):
            try:
                os.link(src / name, tmp / name)
            except OSError:
                shutil.copyfile(src / name, tmp / name)
                os.chmod(tmp / name, 0o644)
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old."))
            dest.rename(old / dest.name)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class ArtifactStore:
    """The served folder of artifacts (tarballs and folders) and their manifests."""

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
        """The file the manifest of ``name`` (or ``name.tar.gz``) names: the tarball, or a
        wheelhouse's requirements.txt inside its folder; raises ArtifactNotFound."""
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
            elif (self.root / p.stem).is_dir():
                manifest = read_manifest(p)
                if (self.root / manifest.file).is_file():
                    found.append(manifest)
        return found

    def folder(self, name: str) -> Path:
        """The folder of a folder artifact (a wheelhouse)."""
        manifest = self.get(name)
        if manifest.kind is ArtifactKind.TARBALL:
            raise ArtifactNotFound(f"artifact {name!r} is a tarball, not a folder")
        return self.root / manifest.name

    def publish(self, source: Path, manifest: Manifest) -> Manifest:
        """Copy ``source`` in as ``manifest.name``: a tarball, or for a wheelhouse its folder
        (hard-linked where possible). A same-sha256 artifact with all its files is left
        alone."""
        self._check_name(manifest.name)
        final = manifest.with_name(manifest.name)
        dest = self.root / final.file
        mpath = self.manifest_path(final.name)
        if dest.is_file() and mpath.is_file():
            current = read_manifest(mpath)
            if current.sha256 == final.sha256 and current.kind is final.kind:
                if final.kind is ArtifactKind.TARBALL:
                    if current.size == dest.stat().st_size:
                        return current
                elif _published_files(source) == _published_files(self.root / final.name):
                    return current
        if final.kind is ArtifactKind.TARBALL:
            copy_atomic(source, dest)
        else:
            replace_tree(source, self.root / final.name)
        write_json_atomic(mpath, final.to_json())
        return final

    def remove(self, name: str) -> None:
        manifest = self.get(name)
        self.manifest_path(name).unlink(missing_ok=True)
        if manifest.kind is ArtifactKind.TARBALL:
            (self.root / f"{name}{SUFFIX}").unlink(missing_ok=True)
        else:
            shutil.rmtree(self.root / name, ignore_errors=True)
