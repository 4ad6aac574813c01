"""The model store: GGUF check, add/list/file/remove, PACKAGE:RELPATH, the CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.cli.model import add_model_commands
from provisioner.errors import ModelError
from provisioner.models.store import ModelNotFound, ModelStore, gguf_version, resolve_source


def gguf_bytes(payload: bytes = b"weights", version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<I", version) + payload


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    p = tmp_path / "tiny-model.Q4_0.gguf"
    p.write_bytes(gguf_bytes())
    return p


def test_gguf_magic() -> None:
    assert gguf_version(gguf_bytes()[:8]) == 3
    assert gguf_version(gguf_bytes(version=2)[:8]) == 2
    for head in (b"PK\x03\x04\x14\x00\x00\x00", b"GGU", b"", b'{"archi'):
        with pytest.raises(ModelError, match="not a GGUF file"):
            gguf_version(head)


def test_add_list_file_remove(tmp_path: Path, gguf: Path) -> None:
    store = ModelStore(tmp_path / "store")
    model = store.add(str(gguf))
    assert model.name == "tiny-model.Q4_0"
    assert model.sha256 == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert model.size == len(gguf_bytes()) and model.gguf_version == 3
    assert model.kind.value == "gguf"
    served = store.file("tiny-model.Q4_0")
    assert served.path.read_bytes() == gguf.read_bytes()
    assert (served.sha256, served.size) == (model.sha256, model.size)
    on_disk = json.loads((tmp_path / "store" / "tiny-model.Q4_0.json").read_text())
    assert on_disk["sha256"] == model.sha256 and on_disk["kind"] == "gguf"
    assert [m.name for m in store.list()] == ["tiny-model.Q4_0"]
    assert store.add(str(gguf)) == model  # same file again: nothing changes
    store.remove("tiny-model.Q4_0")
    assert store.list() == [] and not served.path.exists()
    with pytest.raises(ModelNotFound):
        store.file("tiny-model.Q4_0")


def test_add_refuses_non_gguf_and_taken_names(tmp_path: Path, gguf: Path) -> None:
    store = ModelStore(tmp_path / "store")
    other = tmp_path / "config.json"
    other.write_text('{"architectures": []}')
    with pytest.raises(ModelError, match=r"config\.json: not a GGUF file"):
        store.add(str(other))
    with pytest.raises(ModelError, match=r"no \*\.safetensors beside config\.json"):
        store.add(str(tmp_path))  # config.json and a GGUF file: no Hugging Face folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"is a folder without config\.json"):
        store.add(str(tmp_path / "empty"))
    store.add(str(gguf), name="m")
    second = tmp_path / "second.gguf"
    second.write_bytes(gguf_bytes(b"other weights"))
    with pytest.raises(ModelError, match="exists with another file"):
        store.add(str(second), name="m")
    with pytest.raises(ModelError, match="bad model name"):
        store.add(str(second), name="../m")
    assert [m.name for m in store.list()] == ["m"]
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".")]


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    pkg = tmp_path / "site" / "fake_models_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (pkg / "Tiny.Q8_0.gguf").write_bytes(gguf_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield pkg
    sys.modules.pop("fake_models_pkg", None)


def test_package_relpath(fake_package: Path, tmp_path: Path) -> None:
    assert resolve_source("fake_models_pkg:Tiny.Q8_0.gguf") == fake_package / "Tiny.Q8_0.gguf"
    assert resolve_source("fake-models-pkg:") == fake_package / "Tiny.Q8_0.gguf"
    with pytest.raises(ModelError, match="no file"):
        resolve_source("fake_models_pkg:../../etc/passwd")
    with pytest.raises(ModelError, match="no installed package"):
        resolve_source("no_such_pkg_xyz:model.gguf")
    with pytest.raises(ModelError, match="no such file"):
        resolve_source(str(tmp_path / "missing.gguf"))
    model = ModelStore(tmp_path / "store").add("fake_models_pkg:Tiny.Q8_0.gguf")
    assert model.name == "Tiny.Q8_0" and model.source == "fake_models_pkg:Tiny.Q8_0.gguf"


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_model_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli(tmp_path: Path, gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    assert run_cli(["model", "add", str(gguf), "--name", "tiny", "--store", store]) == 0
    assert "tiny" in capsys.readouterr().out
    assert run_cli(["model", "list", "--json", "--store", store]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in listed] == ["tiny"] and listed[0]["kind"] == "gguf"
    assert run_cli(["model", "remove", "tiny", "--store", store]) == 0
    assert run_cli(["model", "list", "--store", store]) == 0
    assert "tiny" not in capsys.readouterr().out.split("removed tiny")[-1]
