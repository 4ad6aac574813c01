"""vLLM's plan: layout, shares, warnings, arguments and the rendered units (pure)."""

from __future__ import annotations

import pytest

from provisioner.postinstall import vllm
from provisioner.postinstall.plan import Download, Member, plan
from provisioner.records import Cluster, Served

TURING = {"dtype": "half", "quantization": "awq", "backend": "cuda"}
CPU = {"dtype": "bfloat16", "backend": "cpu"}


def vm(name: str, address: str, gpus: int = 1, settings: dict[str, str] | None = None,
       link: int | None = 100) -> vllm.VllmMember:  # fmt: skip
    return vllm.VllmMember(name, address, "enp3s0", link, gpus, settings or TURING)


RTX = [vm("node0", "10.0.0.10"), vm("node1", "10.0.0.11")]


def cluster(**kw: object) -> Cluster:
    base: dict[str, object] = {
        "name": "rtx", "engine": "vllm", "model": "qwen", "head": "node0",
        "workers": ("node1",), "serve": (Served("qwen", "qwen", None, 8000),),
    }  # fmt: skip
    base.update(kw)
    return Cluster(**base)  # type: ignore[arg-type]


def test_layout_defaults_tensor_within_node_pipeline_across() -> None:
    lay, problems = vllm.layout(cluster(), RTX)
    assert (lay.tensor_parallel, lay.pipeline_parallel, lay.ray) == (1, 2, True)
    assert problems == []


def test_tensor_parallel_across_a_100_mbps_link_is_warned() -> None:
    lay, problems = vllm.layout(cluster(tensor_parallel=2, pipeline_parallel=1), RTX)
    assert problems == []
    said = vllm.warnings(lay, RTX)
    assert any("tensor parallel 2 spans nodes over a 100 Mb/s link" in w for w in said), said
    assert any("--tensor-parallel 1 --pipeline-parallel 2" in w for w in said)


def test_pipeline_across_a_slow_link_is_warned_and_fast_links_are_not() -> None:
    lay, _ = vllm.layout(cluster(), RTX)
    assert any("pipeline stages cross a 100 Mb/s link" in w for w in vllm.warnings(lay, RTX))
    fast = [vm("node0", "10.0.0.10", link=100_000), vm("node1", "10.0.0.11", link=100_000)]
    lay, _ = vllm.layout(cluster(tensor_parallel=2, pipeline_parallel=1), fast)
    assert vllm.warnings(lay, fast) == []


def test_more_gpus_than_the_members_have_is_refused() -> None:
    _, problems = vllm.layout(cluster(tensor_parallel=2, pipeline_parallel=2), RTX)
    assert problems == ["tensor parallel 2 x pipeline parallel 2 needs 4 GPUs; the members have 2"]


def test_cpu_backend_over_ray_is_refused_but_world_size_one_is_not() -> None:
    cpus = [vm("a", "10.0.0.1", 0, CPU), vm("b", "10.0.0.2", 0, CPU)]
    c = cluster(head="a", workers=("b",))
    _, problems = vllm.layout(c, cpus)
    assert "vLLM's CPU backend does not run over Ray" in problems[0]
    lay, problems = vllm.layout(c.__class__(**{**c.__dict__, "pipeline_parallel": 1}), cpus)
    assert problems == [] and lay.ray and lay.world_size == 1
    assert any("only join Ray" in w for w in vllm.warnings(lay, cpus))


@pytest.mark.parametrize(
    ("serve", "reason"),
    [
        ([("a", 0.75), ("b", 0.30)], "shares add up to 1.05 (a 0.75 + b 0.3)"),
        ([("a", 0.5), ("b", None)], "b has none"),
        ([("a", 1.2)], "share 1.2 is not between 0 and 1"),
        ([("a", 0.4), ("a", 0.4)], "served names repeat"),
    ],
)
def test_shares_refusals(serve: list[tuple[str, float | None]], reason: str) -> None:
    served = [Served(n, "m", s, 8000 + i) for i, (n, s) in enumerate(serve)]
    problems = vllm.shares_problems(served)
    assert any(reason in p for p in problems), problems


def test_two_models_on_one_gpu_fit() -> None:
    served = [Served("reasoning", "mistral", 0.45, 8000), Served("embed", "bge", 0.30, 8001)]
    assert vllm.shares_problems(served) == []


@pytest.mark.parametrize(
    ("text", "served"),
    [
        ("reasoning=mistral-7b-awq:0.45", Served("reasoning", "mistral-7b-awq", 0.45, 8000)),
        ("embed=bge-base:0.30@9001", Served("embed", "bge-base", 0.30, 9001)),
        ("chat=smollm2", Served("chat", "smollm2", None, 8000)),
    ],
)
def test_parse_serve(text: str, served: Served) -> None:
    assert vllm.parse_serve(text, 0) == served


@pytest.mark.parametrize("text", ["nomodel", "=m", "a=", "a=m:x", "a=m@99999"])
def test_parse_serve_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="--serve"):
        vllm.parse_serve(text, 0)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a\nExecStartPre=/bin/sh=m", "served"),  # the name is a unit's and a log's name
        ("x;id=m", "served"),
        ("../../etc/x=m", "served"),
        ("a b=m", "served"),
        ("n=../m", "model"),
        ("n=m$(id)", "model"),
        ("n=m%n:0.5", "model"),
    ],
)
def test_parse_serve_refuses_names_that_break_their_pattern(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=f"--serve .*: {why} "):
        vllm.parse_serve(text, 0)


def test_exec_arguments_are_quoted_as_systemd_reads_them() -> None:
    plain = ["--model", "/m/qwen", "--host", "10.0.0.10", "--gpu-memory-utilization", "0.45"]
    assert vllm.quoted(plain) == " ".join(plain)  # plain words stay bare
    assert vllm.quoted(["--x", "a b", "50%", "$HOME", 'q"\\']) == (
        '--x "a b" 50%% "$$HOME" "q\\"\\\\"'
    )


def test_turing_arguments_use_half_and_ray() -> None:
    c = cluster()
    lay, _ = vllm.layout(c, RTX)
    argv = vllm.served_argv(c, c.serve[0], lay, RTX[0], "/var/lib/provisioner/models/qwen",
                            model_quantization="awq")  # fmt: skip
    pairs = dict(zip(argv[::2], argv[1::2], strict=False))
    assert pairs["--dtype"] == "half"
    assert "--quantization" not in pairs  # the model's config says awq: vLLM picks awq_marlin
    assert pairs["--pipeline-parallel-size"] == "2"
    assert pairs["--tensor-parallel-size"] == "1"
    assert argv[-2:] == ["--distributed-executor-backend", "ray"]
    assert pairs["--host"] == "10.0.0.10"
    assert "--enforce-eager" not in argv  # CUDA graphs on a GPU


def _render(c: Cluster, found: list[vllm.VllmMember]) -> dict[str, list[str]]:
    models = {s.model: {"dir": f"/m/{s.model}", "check": "true", "action": "true"}
              for s in c.served()}  # fmt: skip
    extra = {}
    for m in found:
        ctx = vllm.context(c, m, found, venv="/opt/vllm/w", models=models)
        ctx["vllm"]["install"] = "install-it"
        ctx["ray"]["token"] = "t0ken"
        extra[m.hostname] = ctx
    members = [Member(m.hostname, f"52:54:00:00:00:0{i}", m.address, "p")
               for i, m in enumerate(found)]  # fmt: skip
    lay, _ = vllm.layout(c, found)
    wheel = Download("vllm-0.32.0-cpu-cp311", "w/requirements.txt", "http://c/w", "ab" * 32)
    plans = plan(c, members, control_url="http://c", artifact=wheel, model=None,
                 extra=extra, engine_recipes=("vllm", "ray") if lay.ray else ("vllm",))  # fmt: skip
    return {p.member.hostname: [s.name for s in p.steps] for p in plans} | {
        f"{p.member.hostname}:put": [s.put[1].decode() for s in p.steps if s.put] for p in plans
    }


def test_two_models_on_one_node_render_two_units() -> None:
    two = (Served("reasoning", "mistral", 0.45, 8000), Served("embed", "bge", 0.30, 8001))
    c = cluster(head="motoko", workers=(), serve=two)
    steps = _render(c, [vm("motoko", "10.0.0.5", 1, {"dtype": "bfloat16", "backend": "cuda"})])
    assert steps["motoko"] == [
        "cache disk", "hostname", "node firewall rules", "node firewall loaded", "python venv",
        "wheelhouse lock", "vllm runtime", "model bge", "model mistral", "api key",
        "server reasoning", "server embed",
    ]  # fmt: skip
    units = [t for t in steps["motoko:put"] if "ExecStart" in t]
    assert "--gpu-memory-utilization 0.45" in units[0] and "--port 8000" in units[0]
    assert "--gpu-memory-utilization 0.3" in units[1] and "--port 8001" in units[1]
    assert "RAY_ADDRESS" not in units[0]  # one node: no Ray


def test_multi_node_renders_ray_on_every_member_and_vllm_on_the_head() -> None:
    steps = _render(cluster(), RTX)
    assert "ray node" in steps["node0"] and "ray node" in steps["node1"]
    assert "server qwen" in steps["node0"] and "server qwen" not in steps["node1"]
    head_ray = next(t for t in steps["node0:put"] if "ray start" in t)
    worker_ray = next(t for t in steps["node1:put"] if "ray start" in t)
    assert "--head --port 6379" in head_ray
    assert "--address 10.0.0.10:6379" in worker_ray
    assert "Environment=NCCL_SOCKET_IFNAME=enp3s0" in worker_ray
    assert "Environment=RAY_AUTH_MODE=token" in worker_ray
    nft = next(t for t in steps["node1:put"] if "table inet provisioner_ray" in t)
    assert "elements = { 10.0.0.10, 10.0.0.11 }" in nft
    assert "t0ken" in steps["node1:put"]
