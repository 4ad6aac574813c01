"""vLLM (and Ray under it) on a cluster's nodes: pure planning.

From the cluster, its members and their profiles' ``engines.vllm`` settings this module
works out the parallel layout (tensor parallel within a node, pipeline parallel across
nodes, as vLLM's docs advise), the argument list of every served model's OpenAI server,
the Ray ports (pinned, so a firewall can name them) and what a user should be warned of
(a slow link between members under tensor parallel). Nothing here touches a node: the
``vllm`` and ``ray`` recipes in ``postinstall/`` render from :func:`context`.

vLLM's own parser is the judge of the arguments: ``tests/integration`` parses every
rendered list with it (in the control node's vLLM venv).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provisioner.artifacts import cuda_driver
from provisioner.names import UnsafeValue, check_model, check_served
from provisioner.postinstall.recipes import systemd_word
from provisioner.records import Cluster, Served

VENV_ROOT = "/var/lib/provisioner/vllm"  # on the cache disk where a node has one
MODEL_ROOT = "/var/lib/provisioner/models"
FIRST_PORT = 8000
DEFAULT_SHARE = 0.9  # vLLM's own default --gpu-memory-utilization
TOKEN_PATH = "/etc/provisioner/ray-token"
# Ray's ports, pinned (Ray picks random ones otherwise): the firewall opens exactly these
# to the cluster's members. Names as `ray start` spells its flags.
RAY_PORTS: Mapping[str, int] = {
    "port": 6379,  # GCS: the head's address
    "dashboard-port": 8265,
    "ray-client-server-port": 10001,
    "node-manager-port": 6800,
    "object-manager-port": 6801,
    "metrics-export-port": 6802,
    "dashboard-agent-grpc-port": 6803,
    "dashboard-agent-listen-port": 52365,
    "runtime-env-agent-port": 6804,
}
RAY_WORKER_PORTS = (11000, 11999)  # --min-worker-port / --max-worker-port
# Link speeds below which a layout is a bad idea (Mb/s): tensor parallel exchanges
# activations at every layer; pipeline parallel once per stage and token.
TP_MIN_LINK_MBPS = 25_000
PP_MIN_LINK_MBPS = 1_000


@dataclass(frozen=True)
class VllmMember:
    """What the vLLM plan needs of one node (beside its address)."""

    hostname: str
    address: str
    interface: str | None  # the NIC holding ``address`` (NCCL/GLOO ifname)
    link_mbps: int | None  # its speed as the agent reported it
    gpus: int  # accelerators the profile's engine would use (0: CPU)
    settings: Mapping[str, str]  # the profile's engines.vllm settings (dtype, backend...)
    python: str | None = None  # its image's Python tag (cp313); None: not known
    image: str | None = None  # the image ref it boots (for messages)
    driver: str | None = None  # its NVIDIA driver (550.163.01, or a branch: 580); None: none
    driver_source: str = ""  # where that comes from ("its image debian-trixie-nvidia@1")
    memory_bytes: int | None = None  # its RAM as the agent reported it
    image_ram: int = 0  # what its image holds in RAM (image/guardrails.py's ram_needed)
    cache_disk: bool = False  # /var/lib/provisioner (venv, models) is on a disk, not in RAM


@dataclass(frozen=True)
class Layout:
    tensor_parallel: int
    pipeline_parallel: int
    nodes: int

    @property
    def world_size(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel

    @property
    def ray(self) -> bool:
        """Ray runs when the cluster has more than one node."""
        return self.nodes > 1


def layout(cluster: Cluster, members: Sequence[VllmMember]) -> tuple[Layout, list[str]]:
    """The parallel layout and the problems that refuse it (empty: fine)."""
    gpus = min((m.gpus for m in members), default=0)
    tp = cluster.tensor_parallel or max(gpus, 1)
    pp = cluster.pipeline_parallel or len(members)
    result = Layout(tp, pp, len(members))
    problems = []
    if tp < 1 or pp < 1:
        problems.append("--tensor-parallel and --pipeline-parallel are 1 or more")
        return result, problems
    backend = backend_of(members)
    total = sum(max(m.gpus, 1) for m in members)
    if backend == "cpu":
        if result.world_size > 1 and len(members) > 1:
            problems.append(
                f"vLLM's CPU backend does not run over Ray (tensor parallel {tp} x pipeline "
                f"parallel {pp}): serve on one node, or give --tensor-parallel 1 "
                "--pipeline-parallel 1 (the other members then only join Ray), or use "
                "--engine llama-rpc"
            )
    elif result.world_size > total:
        problems.append(
            f"tensor parallel {tp} x pipeline parallel {pp} needs {result.world_size} GPUs; "
            f"the members have {total}"
        )
    if pp > len(members) and len(members) > 1:
        problems.append(f"pipeline parallel {pp} is more than the {len(members)} nodes")
    return result, problems


def warnings(lay: Layout, members: Sequence[VllmMember]) -> list[str]:
    """What a user should know before running this layout (it still runs)."""
    out: list[str] = []
    if not lay.ray:
        return out
    gpus = min((m.gpus for m in members), default=0)
    known = [(m.link_mbps, m.hostname) for m in members if m.link_mbps]
    slowest = min(known) if known else None
    if lay.tensor_parallel > max(gpus, 1):
        if slowest and slowest[0] < TP_MIN_LINK_MBPS:
            out.append(
                f"tensor parallel {lay.tensor_parallel} spans nodes over a {_speed(slowest[0])} "
                f"link ({slowest[1]}): every layer waits on the network; prefer "
                f"--tensor-parallel {max(gpus, 1)} --pipeline-parallel {lay.nodes}"
            )
        elif slowest is None:
            out.append(
                f"tensor parallel {lay.tensor_parallel} spans nodes and no member reported its "
                "link speed: across nodes tensor parallel needs 25 Gb/s or more"
            )
    if lay.pipeline_parallel > 1 and slowest and slowest[0] < PP_MIN_LINK_MBPS:
        out.append(
            f"pipeline stages cross a {_speed(slowest[0])} link ({slowest[1]}): expect slow "
            "prompt processing; tokens/s holds up better"
        )
    if lay.world_size == 1:
        out.append(
            "tensor parallel 1 x pipeline parallel 1: vLLM runs on the head alone; the other "
            "members only join Ray"
        )
    return out


def _speed(mbps: int) -> str:
    return f"{mbps // 1000} Gb/s" if mbps >= 1000 and mbps % 1000 == 0 else f"{mbps} Mb/s"


def backend_of(members: Sequence[VllmMember]) -> str:
    """``cuda`` when any member's profile says so (or has GPUs), else ``cpu``."""
    for m in members:
        if m.settings.get("backend") == "cuda" or (m.gpus and "backend" not in m.settings):
            return "cuda"
    return "cpu"


def driver_problems(members: Sequence[VllmMember], cuda: str | None, wheelhouse: str) -> list[str]:
    """Members whose NVIDIA driver is older than the wheelhouse's CUDA needs (pure; a CPU
    wheelhouse, ``cuda`` None, needs none)."""
    if cuda is None:
        return []
    found = []
    for m in members:
        if m.gpus and m.driver:
            said = cuda_driver.problem(m.hostname, cuda, wheelhouse, m.driver, m.driver_source)
            if said:
                found.append(said)
    return found


def ram_problems(
    members: Sequence[VllmMember],
    venv_bytes: int | None,
    model_bytes: int,
    wheelhouse: str,
    download_bytes: int = 0,
) -> list[str]:
    """Members without a cache disk whose RAM cannot hold their image, the venv made from
    ``wheelhouse`` while its wheels are still downloaded (pip fetches them all before it
    installs) and the models (pure; post-install writes them into the tmpfs over the
    image). Unknown RAM or venv size refuses nothing."""
    if venv_bytes is None:
        return []
    venv_bytes += download_bytes
    found = []
    for m in members:
        need = m.image_ram + venv_bytes + model_bytes
        if m.cache_disk or m.memory_bytes is None or m.memory_bytes >= need:
            continue
        found.append(
            f"{m.hostname}: {_gib(m.memory_bytes)} of RAM cannot hold its image "
            f"({_gib(m.image_ram)}), the vLLM venv with its download ({_gib(venv_bytes)}, "
            f"from {wheelhouse}) and "
            f"the models ({_gib(model_bytes)}): {_gib(need)} in all, in RAM on a node without "
            f"a cache disk; give it one (provisioner node disk init {m.hostname} "
            "/dev/disk/by-id/...)"
        )
    return found


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def python_of(members: Sequence[VllmMember], default: str) -> tuple[str, list[str]]:
    """(the Python tag the cluster's wheelhouse is built for, problems): every member's
    image must carry the same Python (one venv layout, and Ray refuses a node whose Python
    differs from the head's); ``default`` (the control node's) when no image says."""
    tags: dict[str, list[str]] = {}
    for m in members:
        if m.python:
            tags.setdefault(m.python, []).append(f"{m.hostname} ({m.image or '?'})")
    if len(tags) > 1:
        said = "; ".join(f"{tag}: {', '.join(who)}" for tag, who in sorted(tags.items()))
        return default, [
            f"the members' images carry different Pythons ({said}): Ray needs one Python on "
            "every node; boot them one image (provisioner image use IMAGE --profile P)"
        ]
    return (next(iter(tags)) if tags else default), []


def shares_problems(served: Sequence[Served]) -> list[str]:
    """Several models on one node: every share given, each in (0, 1), together < 1.0."""
    problems = []
    names = [s.name for s in served]
    if len(set(names)) != len(names):
        problems.append(f"served names repeat: {', '.join(names)}")
    ports = [s.port for s in served]
    if len(set(ports)) != len(ports):
        problems.append(f"ports repeat: {', '.join(map(str, ports))}")
    clash = sorted(set(ports) & set(RAY_PORTS.values()))
    if clash:
        problems.append(f"port {clash[0]} is one of Ray's")
    for s in served:
        if s.share is not None and not 0 < s.share < 1:
            problems.append(f"{s.name}: share {s.share} is not between 0 and 1")
    if len(served) > 1:
        missing = [s.name for s in served if s.share is None]
        if missing:
            problems.append(
                f"several models on one node: give each a share (NAME=MODEL:SHARE); "
                f"{', '.join(missing)} has none"
            )
        else:
            total = sum(s.share or 0 for s in served)
            if total >= 1.0:
                parts = " + ".join(f"{s.name} {s.share}" for s in served)
                problems.append(
                    f"shares add up to {total:.2f} ({parts}): the models would not fit in one "
                    "accelerator's memory; lower them so they add up to less than 1.0"
                )
    return problems


def parse_serve(text: str, index: int) -> Served:
    """``NAME=MODEL[:SHARE][@PORT]`` (``--serve``); ports default to 8000, 8001, ...
    NAME and MODEL follow :mod:`provisioner.names` (they name a unit and its log)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--serve {text!r}: NAME=MODEL[:SHARE][@PORT]")
    try:
        check_served(name)
    except UnsafeValue as exc:
        raise ValueError(f"--serve {text!r}: {exc}") from None
    port = FIRST_PORT + index
    if "@" in rest:
        rest, _, port_text = rest.rpartition("@")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"--serve {text!r}: port {port_text!r}")
        port = int(port_text)
    share = None
    if ":" in rest:
        rest, _, share_text = rest.rpartition(":")
        try:
            share = float(share_text)
        except ValueError:
            raise ValueError(f"--serve {text!r}: share {share_text!r} is not a number") from None
    if not rest:
        raise ValueError(f"--serve {text!r}: no model")
    try:
        check_model(rest)
    except UnsafeValue as exc:
        raise ValueError(f"--serve {text!r}: {exc}") from None
    return Served(name, rest, share, port)


def served_argv(
    cluster: Cluster,
    served: Served,
    lay: Layout,
    head: VllmMember,
    model_dir: str,
    *,
    model_quantization: str | None = None,
) -> list[str]:
    """The arguments of ``python -m vllm.entrypoints.openai.api_server`` for one model."""
    opts = cluster.options
    dtype = opts.get("dtype") or head.settings.get("dtype") or "auto"
    share = served.share if served.share is not None else DEFAULT_SHARE
    argv = [
        "--model", model_dir,
        "--served-model-name", served.name,
        "--host", head.address or "0.0.0.0",
        "--port", str(served.port),
        "--dtype", dtype,
        "--gpu-memory-utilization", str(share),
        "--tensor-parallel-size", str(lay.tensor_parallel),
        "--pipeline-parallel-size", str(lay.pipeline_parallel),
    ]  # fmt: skip
    # A quantized model's own config names its method and vLLM then picks its fastest
    # kernel for it (awq -> awq_marlin); naming it again forces the slower float16-only one.
    del model_quantization
    if opts.get("quantization"):
        argv += ["--quantization", opts["quantization"]]
    if opts.get("max_model_len"):
        argv += ["--max-model-len", opts["max_model_len"]]
    if opts.get("enforce_eager", "true" if backend_of([head]) == "cpu" else "") in ("1", "true"):
        argv.append("--enforce-eager")
    if lay.ray and lay.world_size > 1:
        argv += ["--distributed-executor-backend", "ray"]
    return argv


def environment(
    cluster: Cluster, member: VllmMember, lay: Layout, head: VllmMember
) -> dict[str, str]:
    """The environment of vLLM's and Ray's units on ``member``."""
    env = {
        "VLLM_HOST_IP": member.address,
        "HF_HUB_OFFLINE": "1",  # models come from the control node, never from a hub
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if member.interface:
        env["NCCL_SOCKET_IFNAME"] = member.interface
        env["GLOO_SOCKET_IFNAME"] = member.interface
    if backend_of([member]) == "cpu" and cluster.options.get("kv_cache_gib"):
        env["VLLM_CPU_KVCACHE_SPACE"] = cluster.options["kv_cache_gib"]
    if lay.ray:
        env["RAY_ADDRESS"] = f"{head.address}:{RAY_PORTS['port']}"
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = TOKEN_PATH
    return env


def ray_start_args(cluster: Cluster, member: VllmMember, head: VllmMember) -> list[str]:
    """``ray start --block`` arguments for ``member`` (head or worker), ports pinned."""
    args = ["--block", "--node-ip-address", member.address, "--disable-usage-stats"]
    if member.hostname == head.hostname:
        args += ["--head", "--port", str(RAY_PORTS["port"]), "--dashboard-host", member.address]
        for flag in ("dashboard-port", "ray-client-server-port"):
            args += [f"--{flag}", str(RAY_PORTS[flag])]
    else:
        args += ["--address", f"{head.address}:{RAY_PORTS['port']}"]
    for flag in (
        "node-manager-port", "object-manager-port", "metrics-export-port",
        "dashboard-agent-grpc-port", "dashboard-agent-listen-port", "runtime-env-agent-port",
    ):  # fmt: skip
        args += [f"--{flag}", str(RAY_PORTS[flag])]
    args += ["--min-worker-port", str(RAY_WORKER_PORTS[0])]
    args += ["--max-worker-port", str(RAY_WORKER_PORTS[1])]
    if cluster.options.get("ray_object_store_bytes"):
        args += ["--object-store-memory", cluster.options["ray_object_store_bytes"]]
    return args


def uses_ray(cluster: Cluster) -> bool:
    """Ray runs under vLLM when the cluster has more than one node."""
    return len(cluster.members) > 1


def unit_name(cluster: Cluster, served: Served) -> str:
    return f"vllm-{cluster.name}-{served.name}.service"


def ray_unit(cluster: Cluster) -> str:
    return f"ray-{cluster.name}.service"


def quoted(argv: Sequence[str]) -> str:
    """An argument list as one systemd ExecStart tail, each argument as systemd reads it
    (the ``systemd`` filter's quoting: plain words bare, ``%%`` and ``$$`` escaped)."""
    return " ".join(systemd_word(a) for a in argv)


def context(
    cluster: Cluster,
    member: VllmMember,
    members: Sequence[VllmMember],
    *,
    venv: str,
    models: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """The ``vllm`` and ``ray`` entries of a node's recipe context.

    ``models`` maps a store name to what its fetch needs and where it lands
    (``{"dir": ..., "check": ..., "action": ..., "quantization": ...}``)."""
    by_name = {m.hostname: m for m in members}
    head = by_name[cluster.head]
    lay, _ = layout(cluster, members)
    env = environment(cluster, member, lay, head)
    served = []
    for s in cluster.served():
        model = models[s.model]
        argv = served_argv(cluster, s, lay, head, str(model["dir"]),
                           model_quantization=model.get("quantization"))  # fmt: skip
        entry = {"name": s.name, "model": s.model, "port": s.port, "share": s.share}
        entry.update(unit=unit_name(cluster, s), args=quoted(argv), argv=argv)
        served.append(entry)
    ray_args = ray_start_args(cluster, member, head)
    needed = sorted({s.model for s in cluster.served()})
    return {
        "vllm": {
            "venv": venv,
            "python": f"{venv}/bin/python",
            "served": served,
            "units": [s["unit"] for s in served],
            "models": [{"name": n, **models[n]} for n in needed],
            "env": env,
            "backend": backend_of(members),
            "layout": {
                "tensor_parallel": lay.tensor_parallel,
                "pipeline_parallel": lay.pipeline_parallel,
                "ray": lay.ray,
            },
        },
        "ray": {
            "unit": ray_unit(cluster),
            "args": quoted(ray_args),
            "argv": ray_args,
            "members": [m.address for m in members],
            "ports": sorted(RAY_PORTS.values()),
            "worker_ports": f"{RAY_WORKER_PORTS[0]}-{RAY_WORKER_PORTS[1]}",
            "token_path": TOKEN_PATH,
            "head": head.address,
        },
    }
