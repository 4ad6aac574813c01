"""Hugging Face model folders: what the model store checks, keeps and nodes fetch.

A folder is what vLLM loads: ``config.json`` and ``*.safetensors`` (sharded ones with their
``model.safetensors.index.json``), the tokenizer beside them. Pure parts:
:func:`hf_facts` (the vLLM-relevant facts of ``config.json``: :class:`HfFacts`),
:func:`select_hf_files` (which files are kept, which left out: weights in other formats,
an old ``SHA256SUMS``), :func:`sha256sums` (the text of the store's ``SHA256SUMS``) and
:func:`fetch_tree_command` (the shell lines post-install runs on a node to fetch a folder
and verify every file by it). :func:`scan_hf_folder` reads a folder on disk without
copying it (names, symlinks, Git LFS pointers, safetensors headers, the index's shards)
and returns an :class:`HfFolder`; :class:`provisioner.models.store.ModelStore` copies it in.

Errors: :class:`provisioner.errors.ModelError`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import ModelError

log = logging.getLogger(__name__)

SUMS_NAME = "SHA256SUMS"
MARKER_NAME = ".provisioner-sha256"  # written by fetch_tree_command on the node
# Each part of a kept file's path: safe in a URL, a SHA256SUMS line and a shell word.
_REL_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+=@,-]*$")
_SHARD = re.compile(r"-\d+-of-\d+\.safetensors$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Weights in formats vLLM does not load from a Hugging Face folder when safetensors are
# there: left out of the store (a repository often carries the same weights twice).
OTHER_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".onnx_data",
                 ".gguf", ".ot", ".tflite")  # fmt: skip
LFS_POINTER = b"version https://git-lfs.github.com/spec/"
MAX_SAFETENSORS_HEADER = 100_000_000


@dataclass(frozen=True)
class HfFacts:
    """What a Hugging Face ``config.json`` tells a vLLM command line."""

    architectures: tuple[str, ...]
    dtype: str | None = None
    quantization: str | None = None  # quantization_config.quant_method ("awq", "fp8", ...)
    max_position_embeddings: int | None = None


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def hf_facts(config: object) -> HfFacts:
    """The vLLM-relevant facts of a parsed ``config.json``; ModelError when it is not an
    object or names no architecture (vLLM picks its model class by it). A multimodal
    config keeps dtype and context length in ``text_config``."""
    if not isinstance(config, dict):
        raise ModelError("config.json is not a JSON object")
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise ModelError("config.json names no architectures: vLLM needs one")
    text = config.get("text_config")
    text = text if isinstance(text, dict) else {}

    def pick(*keys: str) -> object:
        for where in (config, text):
            for key in keys:
                if where.get(key) is not None:
                    return where[key]
        return None

    quant = config.get("quantization_config")
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    ctx = pick("max_position_embeddings")
    return HfFacts(
        architectures=tuple(archs),
        dtype=_opt_str(pick("dtype", "torch_dtype")),
        quantization=_opt_str(method),
        max_position_embeddings=ctx if isinstance(ctx, int) and ctx > 0 else None,
    )


def select_hf_files(folder: str, rels: Iterable[str]) -> tuple[list[str], list[str]]:
    """(kept, left out) of a folder's files (relative POSIX paths, hidden ones already
    dropped): weights other than safetensors and a SHA256SUMS of its own are left out.
    ModelError when it is no Hugging Face folder vLLM can load: no config.json, no
    ``*.safetensors`` beside it (PyTorch ``.bin`` only), shards without their index."""
    rels = sorted(rels)
    if "config.json" not in rels:
        raise ModelError(
            f"{folder} is a folder without config.json: expected a Hugging Face model "
            "folder (config.json, *.safetensors) or a GGUF file"
        )
    weights = [r for r in rels if r.endswith(".safetensors") and "/" not in r]
    if not weights:
        pytorch = [r for r in rels if r.endswith((".bin", ".pt", ".pth"))]
        if pytorch:
            raise ModelError(
                f"{folder}: PyTorch weights only ({', '.join(pytorch[:3])}): vLLM loads "
                "*.safetensors; convert them (or download the safetensors revision) first"
            )
        raise ModelError(f"{folder}: no *.safetensors beside config.json: no weights")
    if any(_SHARD.search(w) for w in weights) and not any(
        r.endswith(".safetensors.index.json") and "/" not in r for r in rels
    ):
        raise ModelError(
            f"{folder}: sharded weights ({weights[0]}, ...) without model.safetensors.index.json"
        )

    def left_out(rel: str) -> bool:
        return rel == SUMS_NAME or rel.endswith((*OTHER_WEIGHTS, ".bin.index.json"))

    return [r for r in rels if not left_out(r)], [r for r in rels if left_out(r)]


def sha256sums(digests: Mapping[str, str]) -> str:
    """The text of a SHA256SUMS file, as ``sha256sum -c`` reads it, sorted by path."""
    return "".join(f"{digests[rel]}  {rel}\n" for rel in sorted(digests))


def fetch_tree_command(base_url: str, dest: str, sums_sha256: str) -> tuple[str, str]:
    """(check, action) shell commands for post-install: fetch a store folder served at
    ``base_url`` (``…/models/<name>``) into ``dest`` on a node.

    The check passes when ``<dest>/.provisioner-sha256`` holds ``sums_sha256``. The action
    fetches ``SHA256SUMS``, checks it against ``sums_sha256``, then each file it lists into
    ``<dest>.part/`` (a file already there with the right sha256, left by a run that
    failed, is kept), checks each file's sha256 as it arrives (a wrong one: exit 1 naming
    it), writes the marker and swaps ``<dest>.part`` in for ``<dest>``. Until the swap the
    previous copy is untouched. POSIX sh (dash); it runs in a subshell and does not rely
    on ``set -e`` (ignored left of ``&&``): chain what follows with ``&&``."""
    if not _SHA256.match(sums_sha256):
        raise ModelError(f"bad sha256 {sums_sha256!r} for {base_url}")
    dest = dest.rstrip("/") or "/"
    q = shlex.quote
    verify = '(cd "$part" && printf "%s  %s\\n" "$sum" "$rel" | sha256sum -c --status)'
    curl = "curl -fsS --retry 5 --retry-connrefused"
    check = f'test "$(cat {q(dest + "/" + MARKER_NAME)} 2>/dev/null)" = {q(sums_sha256)}'
    action = "; ".join(
        [
            f"( dest={q(dest)}; part={q(dest + '.part')}; base={q(base_url.rstrip('/'))}",
            f"sha={q(sums_sha256)}",
            'mkdir -p "$(dirname "$dest")" "$part" || exit 1',
            f'{curl} -o "$part.sums" "$base/{SUMS_NAME}" || exit 1',
            'if ! printf "%s  %s\\n" "$sha" "$part.sums" | sha256sum -c --status; then '
            f'echo "sha256 of $base/{SUMS_NAME} is not $sha" >&2; rm -f "$part.sums"; exit 1; fi',
            # a .part left by a run that failed is kept when it was for the same SHA256SUMS
            f'if ! printf "%s  %s\\n" "$sha" "$part/{SUMS_NAME}" | sha256sum -c --status '
            f'2>/dev/null; then rm -rf "$part" && mkdir -p "$part" || exit 1; fi',
            f'mv "$part.sums" "$part/{SUMS_NAME}" || exit 1',
            'while read -r sum rel || [ -n "$rel" ]; do case "$rel" in '
            "''|/*|..|../*|*/..|*/../*) "
            f"echo \"{SUMS_NAME}: refused path '$rel'\" >&2; exit 1;; esac",
            f"if {verify} 2>/dev/null; then continue; fi",
            'mkdir -p "$part/$(dirname "$rel")" || exit 1',
            f'{curl} -o "$part/$rel" "$base/$rel" || exit 1',
            f"if ! {verify}; then "
            'echo "$rel: sha256 is not $sum (fetched from $base/$rel)" >&2; '
            'rm -f "$part/$rel"; exit 1; fi',
            f'done < "$part/{SUMS_NAME}"',
            f'echo "$sha" > "$part/{MARKER_NAME}" || exit 1',
            'rm -rf "$dest.old"; if [ -e "$dest" ]; then mv "$dest" "$dest.old" || exit 1; fi',
            'mv "$part" "$dest" || exit 1',
            'rm -rf "$dest.old" )',
        ]
    )
    return check, action


def _walk(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by relative POSIX path, hidden files and folders
    (``.cache/``, ``.git/``) left out; symlinked folders are refused."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        for d in sorted(dirnames):
            if d.startswith("."):
                dirnames.remove(d)
            elif (here / d).is_symlink():
                rel = (here / d).relative_to(folder).as_posix()
                raise ModelError(f"{folder}: {rel} is a symlink to a folder; copy it in")
        for f in filenames:
            if not f.startswith("."):
                found[(here / f).relative_to(folder).as_posix()] = here / f
    return found


def _check_file(folder: Path, rel: str, path: Path, roots: Sequence[Path]) -> int:
    """The size of a file to keep; ModelError for a name the store won't serve, a symlink
    out of the folder, something not a regular file, a Git LFS pointer or a
    ``.safetensors`` file without a safetensors header."""
    if not all(_REL_PART.match(part) for part in rel.split("/")):
        raise ModelError(
            f"{folder}: {rel!r}: a file name the store does not keep (letters, digits and "
            "'._+=@,-' only); rename or remove it"
        )
    real = Path(os.path.realpath(path))
    if path.is_symlink() and not any(real.is_relative_to(r) for r in roots):
        raise ModelError(f"{folder}: {rel} is a symlink out of the folder (to {real})")
    if not real.is_file():
        raise ModelError(f"{folder}: {rel} is not a regular file")
    size = real.stat().st_size
    with real.open("rb") as f:
        head = f.read(max(9, len(LFS_POINTER)))
    if head.startswith(LFS_POINTER):
        raise ModelError(
            f"{folder}: {rel} is a Git LFS pointer, not the file: `git lfs pull` first"
        )
    if rel.endswith(".safetensors"):
        n = struct.unpack("<Q", head[:8])[0] if len(head) >= 9 else 0
        if not (2 <= n <= MAX_SAFETENSORS_HEADER and 8 + n <= size and head[8:9] == b"{"):
            raise ModelError(f"{folder}: {rel} has no safetensors header")
    return size


def _check_index(folder: Path, files: Mapping[str, Path]) -> None:
    """Every shard a ``*.safetensors.index.json`` names is there."""
    for rel in (r for r in files if r.endswith(".safetensors.index.json") and "/" not in r):
        try:
            index = json.loads(files[rel].read_text())
            shards = {str(s) for s in index["weight_map"].values()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"{folder}: {rel}: no weight_map ({exc})") from exc
        missing = sorted(s for s in shards if s not in files)
        if missing:
            raise ModelError(f"{folder}: {rel} names {', '.join(missing[:3])}: not there")


@dataclass(frozen=True)
class HfFolder:
    """A Hugging Face folder checked and ready to copy."""

    files: dict[str, Path]  # relative POSIX path -> the file (a symlink resolved), sorted
    size: int
    facts: HfFacts
    left_out: tuple[str, ...]


def scan_hf_folder(path: Path) -> HfFolder:
    """Check a Hugging Face folder without copying it: :func:`select_hf_files`, each kept
    file (:func:`_check_file`), the shards of a safetensors index, config.json."""
    real = Path(os.path.realpath(path))
    roots = [real]
    if real.parent.name == "snapshots":  # the Hugging Face cache links to ../../blobs
        roots.append(Path(os.path.realpath(real.parent.parent / "blobs")))
    found = _walk(real)
    kept, left_out = select_hf_files(str(path), found)
    size = sum(_check_file(path, rel, found[rel], roots) for rel in kept)
    files = {rel: Path(os.path.realpath(found[rel])) for rel in kept}
    _check_index(path, files)
    try:
        facts = hf_facts(json.loads(files["config.json"].read_text()))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}/config.json: {exc}") from exc
    if left_out:
        log.warning("%s: left out (not for vLLM): %s", path, ", ".join(left_out))
    return HfFolder(files, size, facts, tuple(left_out))
