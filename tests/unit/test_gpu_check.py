"""scripts/gpu-check's parts that run without a GPU (bench/gpu_check.py, gpu_check_vllm.py):
it refuses to run where nvidia-smi lists no GPU, and its vLLM server gets the arguments
post-install renders for a one-GPU member of that compute capability."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check_vllm  # noqa: E402


def test_without_a_gpu_the_check_exits_2_and_says_why(tmp_path: Path) -> None:
    for engine in ("llama.cpp", "vllm"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--engine", engine],
            capture_output=True, text=True, timeout=60, check=False,
            env={"PATH": str(tmp_path), "PYTHONPATH": str(ROOT)},  # no nvidia-smi
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "no NVIDIA GPU here" in done.stderr


def test_the_vllm_server_is_started_as_post_install_would_start_it() -> None:
    python, model = Path("/venv/bin/python"), Path("/work/model/smol")
    argv, env = gpu_check_vllm.server_argv(python, model, "cuda", gpu_check_vllm.dtype_for("86"))
    assert argv[:3] == [str(python), "-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert flags["--model"] == str(model) and flags["--served-model-name"] == "smol"
    assert flags["--host"] == "127.0.0.1" and flags["--dtype"] == "bfloat16"
    assert flags["--gpu-memory-utilization"] == "0.5" and flags["--max-model-len"] == "2048"
    assert argv[-1] == "--enforce-eager"
    assert env["HF_HUB_OFFLINE"] == "1" and "VLLM_CPU_KVCACHE_SPACE" not in env


def test_bfloat16_only_from_compute_capability_8_and_the_cpu_rehearsal_gets_its_kv_cache() -> None:
    assert [gpu_check_vllm.dtype_for(a) for a in ("61", "70", "75", "80", "86", "120")] == [
        "half", "half", "half", "bfloat16", "bfloat16", "bfloat16",
    ]  # fmt: skip
    assert gpu_check_vllm.dtype_for(None) == "bfloat16"
    _, env = gpu_check_vllm.server_argv(Path("/p"), Path("/m"), "cpu", "bfloat16")
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
