"""Hugging Face folders in the model store: facts, file selection, add/list/folder/remove,
refusals, the CLI, and fetch_tree_command run for real (dash, curl, a loopback server)."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from provisioner.cli.model import add_model_commands
from provisioner.errors import ModelError
from provisioner.models import store as models
from provisioner.models.hf import HfFacts, fetch_tree_command, hf_facts, select_hf_files
from provisioner.models.store import ModelKind, ModelNotFound, ModelStore

CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "torch_dtype": "bfloat16",
    "max_position_embeddings": 8192,
}


def safetensors_bytes(payload: bytes = b"\x00" * 64) -> bytes:
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    return struct.pack("<Q", len(header)) + header + payload


def make_folder(
    root: Path, config: dict[str, Any] | None = None, extra: Mapping[str, bytes] = {}
) -> Path:
    """A tiny Hugging Face folder: config.json, model.safetensors, tokenizer.json, and
    what a download leaves beside them (hidden files, .cache/)."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config or CONFIG))
    (root / "model.safetensors").write_bytes(safetensors_bytes())
    (root / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    (root / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (root / ".cache" / "huggingface").mkdir(parents=True)
    (root / ".cache" / "huggingface" / "download.lock").write_text("")
    for rel, data in extra.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "Tiny-Llama", extra={"pytorch_model.bin": b"pickled weights"})


# ------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("config", "facts"),
    [
        (CONFIG, HfFacts(("LlamaForCausalLM",), "bfloat16", None, 8192)),
        (
            {"architectures": ["Qwen2ForCausalLM"], "dtype": "float16", "torch_dtype": "x",
             "quantization_config": {"quant_method": "awq", "bits": 4}},
            HfFacts(("Qwen2ForCausalLM",), "float16", "awq", None),
        ),
        (
            {"architectures": ["Gemma3ForConditionalGeneration"],
             "text_config": {"torch_dtype": "bfloat16", "max_position_embeddings": 131072}},
            HfFacts(("Gemma3ForConditionalGeneration",), "bfloat16", None, 131072),
        ),
    ],
)  # fmt: skip
def test_hf_facts(config: dict[str, Any], facts: HfFacts) -> None:
    assert hf_facts(config) == facts


@pytest.mark.parametrize("config", [[], {"architectures": []}, {"model_type": "llama"}])
def test_hf_facts_refuses(config: object) -> None:
    with pytest.raises(ModelError, match=r"not a JSON object|no architectures"):
        hf_facts(config)


@pytest.mark.parametrize(
    ("rels", "kept", "left_out"),
    [
        (["config.json", "model.safetensors"], ["config.json", "model.safetensors"], []),
        (
            ["config.json", "model-00001-of-00002.safetensors", "tokenizer.json",
             "model-00002-of-00002.safetensors", "model.safetensors.index.json",
             "pytorch_model.bin", "pytorch_model.bin.index.json", "original/consolidated.pth",
             "SHA256SUMS", "onnx/model.onnx"],
            ["config.json", "model-00001-of-00002.safetensors",
             "model-00002-of-00002.safetensors", "model.safetensors.index.json",
             "tokenizer.json"],
            ["SHA256SUMS", "onnx/model.onnx", "original/consolidated.pth",
             "pytorch_model.bin", "pytorch_model.bin.index.json"],
        ),
    ],
)  # fmt: skip
def test_select_hf_files(rels: list[str], kept: list[str], left_out: list[str]) -> None:
    assert select_hf_files("f", rels) == (kept, left_out)


@pytest.mark.parametrize(
    ("rels", "reason"),
    [
        (["model.safetensors", "tokenizer.json"], "is a folder without config.json"),
        (["config.json", "pytorch_model.bin"], r"PyTorch weights only .*vLLM loads"),
        (["config.json", "sub/model.safetensors"], r"no \*\.safetensors beside config"),
        (["config.json", "model-00001-of-00002.safetensors"], "without model.safetensors.index"),
    ],
)
def test_select_hf_files_refuses(rels: list[str], reason: str) -> None:
    with pytest.raises(ModelError, match=reason):
        select_hf_files("f", rels)


def test_old_manifests_load_and_gguf_manifests_keep_their_keys() -> None:
    old = {"name": "m", "file": "m.gguf", "sha256": "ab", "size": 3}
    model = models.Model.from_json(old)
    assert model.kind is ModelKind.GGUF and model.architectures == ()
    assert set(model.to_json()) == {
        "name", "kind", "file", "sha256", "size", "source", "gguf_version", "added_at"
    }  # fmt: skip


# ------------------------------------------------------------------- the store


def test_add_list_folder_remove(tmp_path: Path, folder: Path) -> None:
    store = ModelStore(tmp_path / "store")
    model = store.add(str(folder))
    kept = ["config.json", "model.safetensors", "tokenizer.json"]
    assert (model.name, model.kind, model.files) == ("Tiny-Llama", ModelKind.HF, 3)
    assert model.size == sum((folder / r).stat().st_size for r in kept)
    assert (model.architectures, model.dtype, model.quantization) == (
        ("LlamaForCausalLM",), "bfloat16", None
    )  # fmt: skip
    assert model.max_position_embeddings == 8192
    where = store.folder("Tiny-Llama")
    assert where == tmp_path / "store" / "Tiny-Llama"
    assert sorted(p.relative_to(where).as_posix() for p in where.rglob("*")) == [
        "SHA256SUMS", *kept
    ]  # fmt: skip
    sums = (where / "SHA256SUMS").read_text()
    assert sums == "".join(
        f"{hashlib.sha256((folder / r).read_bytes()).hexdigest()}  {r}\n" for r in kept
    )
    subprocess.run(["sha256sum", "-c", "--status", "SHA256SUMS"], cwd=where, check=True)
    on_disk = json.loads((tmp_path / "store" / "Tiny-Llama.json").read_text())
    assert on_disk == {
        "name": "Tiny-Llama", "kind": "hf", "file": "Tiny-Llama/SHA256SUMS",
        "sha256": hashlib.sha256(sums.encode()).hexdigest(), "size": model.size, "files": 3,
        "architectures": ["LlamaForCausalLM"], "dtype": "bfloat16", "quantization": None,
        "max_position_embeddings": 8192, "source": str(folder), "added_at": model.added_at,
    }  # fmt: skip
    assert store.list() == [model]
    assert store.add(str(folder)) == model  # the same folder again: nothing changes
    with pytest.raises(ModelError, match="Hugging Face folder, not one file"):
        store.file("Tiny-Llama")
    assert store.remove("Tiny-Llama") == model
    assert list((tmp_path / "store").iterdir()) == []
    with pytest.raises(ModelNotFound):
        store.folder("Tiny-Llama")


def test_taken_names_and_kinds(tmp_path: Path, folder: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.add(str(folder), name="m")
    other = make_folder(tmp_path / "other", {**CONFIG, "max_position_embeddings": 4096})
    with pytest.raises(ModelError, match="'m' exists with other files"):
        store.add(str(other), name="m")
    (other / "config.json").write_text(json.dumps(CONFIG))  # same size, other bytes
    (other / "tokenizer.json").write_text('{"model": {"type": "BPX"}}')
    with pytest.raises(ModelError, match="'m' exists with other files"):
        store.add(str(other), name="m")
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF" + struct.pack("<I", 3) + b"weights")
    with pytest.raises(ModelError, match="exists with another file"):
        store.add(str(gguf), name="m")
    store.add(str(gguf), name="g")
    with pytest.raises(ModelError, match="exists with other content"):
        store.add(str(folder), name="g")
    with pytest.raises(ModelError, match="is a gguf file, not a folder"):
        store.folder("g")
    with pytest.raises(ModelError, match=r"ends in \.gguf"):
        store.add(str(folder), name="g.gguf")
    assert [m.name for m in store.list()] == ["g", "m"]
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".")]


def test_refusals(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    secret = tmp_path / "secret"
    secret.write_text("not for nodes")
    cases: dict[str, tuple[str, Path | bytes, str]] = {
        "absolute symlink": ("notes.txt", secret, "symlink out of the folder"),
        "relative symlink": ("notes.txt", Path("../secret"), "symlink out of the folder"),
        "LFS pointer": ("model.safetensors", b"version https://git-lfs.github.com/"
                        b"spec/v1\noid sha256:abc\nsize 9\n", "Git LFS pointer"),
        "no header": ("model.safetensors", b"\xff" * 16, "no safetensors header"),
        "odd name": ("my notes.txt", b"x", "a file name the store does not keep"),
        "lost shard": ("model.safetensors.index.json",
                       b'{"weight_map": {"a": "model-00002-of-00002.safetensors"}}',
                       "names model-00002-of-00002.safetensors: not there"),
    }  # fmt: skip
    for i, (what, (rel, content, reason)) in enumerate(cases.items()):
        folder = make_folder(tmp_path / f"f{i}")
        target = folder / rel
        if isinstance(content, Path):
            target.symlink_to(content)
        else:
            target.write_bytes(content)
        with pytest.raises(ModelError, match=reason):
            store.add(str(folder))
        assert store.list() == [], what
    folder = make_folder(tmp_path / "linked")
    (folder / "sub").symlink_to(tmp_path)
    with pytest.raises(ModelError, match="sub is a symlink to a folder"):
        store.add(str(folder))
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").iterdir())


def test_links_inside_and_the_hugging_face_cache(tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--Org--Tiny-Chat"
    snap = repo / "snapshots" / "0123abcd"
    blobs = repo / "blobs"
    blobs.mkdir(parents=True)
    make_folder(tmp_path / "real")
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        blob = blobs / hashlib.sha256(f.encode()).hexdigest()
        shutil.copy(tmp_path / "real" / f, blob)
        (snap / f).symlink_to(os.path.relpath(blob, snap))
    (snap / "tokenizer_config.json").symlink_to("tokenizer.json")  # inside the folder
    model = ModelStore(tmp_path / "store").add(str(snap))
    assert model.name == "Tiny-Chat" and model.files == 4
    stored = tmp_path / "store" / "Tiny-Chat" / "model.safetensors"
    assert not stored.is_symlink() and stored.read_bytes() == safetensors_bytes()


def test_failed_copy_leaves_nothing(
    tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = models._hash_file

    def disk_full(path: Path, out: Path | None = None) -> str:
        if path.name == "tokenizer.json":
            raise OSError(28, "No space left on device")
        return real(path, out)

    monkeypatch.setattr(models, "_hash_file", disk_full)
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelError, match=r"copying into .*No space left"):
        store.add(str(folder))
    assert list((tmp_path / "store").iterdir()) == []
    monkeypatch.setattr(models, "_hash_file", real)
    (tmp_path / "store" / "Tiny-Llama").mkdir()  # left by an add that died before its manifest
    (tmp_path / "store" / "Tiny-Llama" / "stale.safetensors").write_bytes(b"old")
    assert store.add(str(folder)).files == 3
    assert not (tmp_path / "store" / "Tiny-Llama" / "stale.safetensors").exists()


def test_package_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "site" / "fake_hf_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    make_folder(pkg / "Tiny")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    try:
        model = ModelStore(tmp_path / "store").add("fake_hf_pkg:Tiny")
    finally:
        sys.modules.pop("fake_hf_pkg", None)
    assert (model.name, model.kind, model.source) == ("Tiny", ModelKind.HF, "fake_hf_pkg:Tiny")


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_model_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli(tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    assert run_cli(["model", "add", str(folder), "--name", "tiny", "--json", "--store", store]) == 0
    added = json.loads(capsys.readouterr().out)
    assert (added["name"], added["kind"], added["files"]) == ("tiny", "hf", 3)
    assert added["architectures"] == ["LlamaForCausalLM"]
    assert run_cli(["model", "list", "--store", store]) == 0
    (_, row) = capsys.readouterr().out.splitlines()
    assert row.split()[:2] == ["tiny", "hf"] and "in 3 files" in row
    with pytest.raises(ModelError, match=r"tokenizer\.json: not a GGUF file.*folder"):
        run_cli(["model", "add", str(folder / "tokenizer.json"), "--store", store])


# ------------------------------------------------------------------- fetch_tree_command


class Server:
    """The store over HTTP on loopback, as `serve` would (``/<name>/<relpath>``)."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        seen = self.requests

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                seen.append(self.path)

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    (tmp_path / "store").mkdir()
    s = Server(tmp_path / "store")
    yield s
    s.close()


SHELL = shutil.which("dash") or "sh"


def sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHELL, "-c", command], capture_output=True, text=True, timeout=60)


def test_fetch_tree_command(tmp_path: Path, folder: Path, server: Server) -> None:
    store = ModelStore(tmp_path / "store")
    model = store.add(str(folder))
    base = f"{server.url}/{model.name}"
    dest = tmp_path / "node" / "opt" / "models" / "Tiny Llama"  # a space, to test quoting
    check, action = fetch_tree_command(base, str(dest), model.sha256)
    kept = ["config.json", "model.safetensors", "tokenizer.json"]

    def same_as_source() -> bool:
        return all((dest / r).read_bytes() == (folder / r).read_bytes() for r in kept)

    assert sh(check).returncode != 0
    done = sh(action)
    assert done.returncode == 0, done.stderr
    assert same_as_source() and sh(check).returncode == 0
    assert sorted(p.name for p in dest.parent.iterdir()) == ["Tiny Llama"]  # no .part/.old
    assert sh(action).returncode == 0 and same_as_source()  # a second action: harmless

    served = store.folder(model.name) / "model.safetensors"
    served.write_bytes(safetensors_bytes(b"\x01" * 64))
    server.requests.clear()
    failed = sh(action)
    assert failed.returncode != 0
    assert "model.safetensors: sha256 is not" in failed.stderr
    assert same_as_source() and sh(check).returncode == 0  # the good copy is still there
    served.write_bytes(safetensors_bytes())
    server.requests.clear()
    assert sh(f"{action} && echo chained").stdout == "chained\n"
    assert "/Tiny-Llama/config.json" not in server.requests  # kept from the failed run
    assert "/Tiny-Llama/model.safetensors" in server.requests and same_as_source()


def test_fetch_tree_command_refuses(tmp_path: Path, folder: Path, server: Server) -> None:
    store = ModelStore(tmp_path / "store")
    model = store.add(str(folder))
    dest = tmp_path / "node" / "m"
    _, action = fetch_tree_command(f"{server.url}/{model.name}", str(dest), "0" * 64)
    wrong = sh(f"{action} && echo chained")
    assert wrong.returncode != 0 and "chained" not in wrong.stdout
    assert "SHA256SUMS is not 0000" in wrong.stderr and not dest.exists()

    evil = tmp_path / "store" / "evil"
    evil.mkdir()
    sums = f"{'a' * 64}  ../../escaped\n".encode()
    (evil / "SHA256SUMS").write_bytes(sums)
    _, action = fetch_tree_command(
        f"{server.url}/evil", str(dest), hashlib.sha256(sums).hexdigest()
    )
    refused = sh(action)
    assert refused.returncode != 0 and "refused path '../../escaped'" in refused.stderr
    assert not (tmp_path / "escaped").exists() and not dest.exists()
    with pytest.raises(ModelError, match="bad sha256"):
        fetch_tree_command(server.url, str(dest), "abc")
