"""A vLLM cluster's pieces from the registry and the stores (for :mod:`.vllm`): its
members as the vLLM plan sees them, its checks at ``cluster create``, its wheelhouse,
models and Ray token.

The planning itself is pure (:mod:`provisioner.postinstall.vllm`); this module reads what
it needs (inventories, profiles, the artifact and model stores, the state dir) and hands
:func:`provisioner.postinstall.plan.plan` the per-node context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from provisioner.artifacts import cuda_driver
from provisioner.artifacts.control_venv import control_venv
from provisioner.artifacts.store import ArtifactStore, Manifest
from provisioner.artifacts.target_python import version_tag
from provisioner.artifacts.wheel_files import node_install_command
from provisioner.artifacts.wheelhouse import VllmBackend, WheelhouseSpec, python_tag
from provisioner.clusters import keys
from provisioner.clusters.engines.artifacts import ArtifactNeed, ensure
from provisioner.clusters.spec import ClusterError
from provisioner.config import Config
from provisioner.data import VLLM_ARGCHECK
from provisioner.discovery.accelerators import accelerators
from provisioner.image import guardrails
from provisioner.models.hf import fetch_tree_command
from provisioner.models.store import ModelStore
from provisioner.node_image import NodeImage, node_image
from provisioner.postinstall import vllm
from provisioner.postinstall.plan import Download
from provisioner.postinstall.recipes import RecipeError, load_recipe
from provisioner.profiles import Engine, ProfileSet
from provisioner.records import Cluster, Node
from provisioner.registry import Registry

WHEELHOUSE_PREFIX = "vllm-"
NVIDIA_DRIVER_RECIPE = "nvidia-driver"  # a profile's drivers: entry (driver-nvidia-driver.yaml)


def member(
    registry: Registry,
    node: Node,
    profiles: ProfileSet,
    image_of: NodeImage | None = None,
    branch: str | None = None,
) -> vllm.VllmMember:
    """A node as the vLLM plan sees it: address, NIC (name, speed), GPUs, profile settings,
    and (with ``image_of``) the image it boots and that image's Python; its NVIDIA driver:
    its image's, else ``branch`` (what post-install's NVIDIA step pins) for a profile with
    that step."""
    inventory = registry.inventory(node.mac)
    profile = profiles.get(node.profile or "")
    ref, image = image_of(node, profile) if image_of is not None else (None, None)
    version = image.python_version if image is not None else None
    driver = source = None
    if image is not None:
        driver = cuda_driver.image_driver(image.manifest.get("packages") or ())
        source = f"its image {image.ref}"
    if driver is None and profile is not None and NVIDIA_DRIVER_RECIPE in profile.drivers:
        driver = branch
        source = f"post-install's driver step (driver-{NVIDIA_DRIVER_RECIPE})"
    rule = profile.engine_rule(Engine.VLLM) if profile else None
    settings = dict(rule.settings) if rule else {}
    interface = speed = None
    gpus = 0
    memory = None
    if inventory is not None:
        memory = inventory.memory_bytes
        nic = next((n for n in inventory.nics if (n.mac or "").lower() == node.mac.lower()), None)
        if nic is not None:
            interface, speed = nic.name, nic.speed_mbps
        gpus = sum(a.count for a in accelerators(inventory))
    if settings.get("backend") == "cpu":
        gpus = 0
    return vllm.VllmMember(
        node.hostname or node.mac, node.ip or "", interface, speed, gpus, settings,
        python=version_tag(version) if version else None, image=ref,
        driver=driver, driver_source=source or "", memory_bytes=memory,
        image_ram=guardrails.ram_needed(
            image.size("squashfs"), image.size("initrd"), image.size("vmlinuz")
        ) if image is not None else 0,
        cache_disk=registry.cache_disk(node.mac) is not None,
    )  # fmt: skip


def step_branch() -> str | None:
    """The driver branch post-install's NVIDIA step holds (``580``), from its recipe."""
    try:
        recipe = load_recipe(f"driver-{NVIDIA_DRIVER_RECIPE}")
    except RecipeError:
        return None
    return cuda_driver.pinned_branch(p for step in recipe.steps for p in step.packages)


def members(
    registry: Registry,
    cluster: Cluster,
    profiles: ProfileSet,
    image_of: NodeImage | None = None,
) -> list[vllm.VllmMember]:
    branch = step_branch()  # the NVIDIA step's pinned branch: its recipe read once
    found = []
    for hostname in cluster.members:
        node = registry.node(hostname)
        if node is None:
            raise ClusterError(f"{cluster.name}: member {hostname} is not in the registry")
        found.append(member(registry, node, profiles, image_of, branch))
    return found


def site_members(
    cfg: Config, registry: Registry, cluster: Cluster, profiles: ProfileSet
) -> list[vllm.VllmMember]:
    """:func:`members`, each one's image looked up in the site's image store."""
    images = node_image(registry, cfg.image_dir, cfg.boot.image)
    return members(registry, cluster, profiles, images)


def runtime(found: Sequence[vllm.VllmMember]) -> tuple[str, str]:
    """(backend, Python tag) of the cluster's wheelhouse: the members' images' Python, the
    control node's where no image says (a mix is refused by :func:`check`)."""
    return vllm.backend_of(found), vllm.python_of(found, python_tag())[0]


def check(
    cluster: Cluster,
    found: Sequence[vllm.VllmMember],
    model_kinds: Mapping[str, str | None],
) -> tuple[list[str], list[str]]:
    """(problems that refuse the cluster, warnings) for a vLLM cluster (pure)."""
    problems = list(vllm.shares_problems(cluster.served()))
    for served in cluster.served():
        kind = model_kinds.get(served.model)
        if kind is None:
            problems.append(f"{served.name}: no model {served.model!r} in the store")
        elif kind != "hf":
            problems.append(
                f"{served.name}: model {served.model!r} is a {kind} file; vLLM serves a "
                "Hugging Face folder (provisioner model add FOLDER)"
            )
    lay, refused = vllm.layout(cluster, found)
    problems += refused + vllm.python_of(found, python_tag())[1]
    return problems, ([] if refused else vllm.warnings(lay, found))


def ray_clashes(cluster: Cluster, others: Sequence[Cluster]) -> list[str]:
    """Ray's ports are pinned: a node can be in one Ray cluster only (pure)."""
    if not vllm.uses_ray(cluster):
        return []
    problems = []
    for other in others:
        if other.engine is Engine.VLLM and vllm.uses_ray(other):
            shared = sorted(set(cluster.members) & set(other.members))
            if shared:
                problems.append(
                    f"{', '.join(shared)} already run Ray for cluster {other.name} (its ports "
                    f"are pinned: one Ray cluster per node); provisioner cluster remove "
                    f"{other.name} first"
                )
    return problems


def wheelhouse(cfg: Config, cluster: Cluster, backend: str, tag: str) -> Download:
    """The wheelhouse the cluster installs: its own (``--artifact``), else the newest one
    for its backend and its nodes' Python (``tag``)."""

    store = ArtifactStore(cfg.state_dir / "artifacts")
    name = cluster.options.get("artifact")
    if name:
        manifest = store.get(name)
    else:
        newest = newest_wheelhouse(store, backend, tag)
        if newest is None:
            raise ClusterError(missing(store, backend, tag))
        manifest = newest
    return Download(
        manifest.name, manifest.file, f"{cfg.http_base}/artifacts/{manifest.file}",
        manifest.sha256, manifest.size,
    )  # fmt: skip


def newest_wheelhouse(store: ArtifactStore, backend: str, tag: str) -> Manifest | None:
    """The newest vLLM wheelhouse for ``backend`` and Python ``tag`` in the store, if any."""
    found = [
        m for m in store.list()
        if m.name.startswith(WHEELHOUSE_PREFIX) and m.name.endswith(f"-{backend}-{tag}")
    ]  # fmt: skip
    return max(found, key=lambda m: m.built_at) if found else None


def build_command(backend: str, tag: str) -> str:
    python = "" if tag == python_tag() else f" --python {tag}"
    return f"provisioner artifact build vllm --backend {backend}{python}"


def missing(store: ArtifactStore, backend: str, tag: str) -> str:
    return (
        f"no vLLM wheelhouse for backend {backend} and Python {tag} in {store.root}: "
        f"{build_command(backend, tag)}"
    )


def need(cfg: Config, cluster: Cluster, backend: str, tag: str) -> ArtifactNeed:
    """The wheelhouse for ``backend`` and ``tag``: the newest in the store, and what
    ``artifact build vllm`` builds when there is none (the cluster's ``torch_index``)."""
    store = ArtifactStore(cfg.state_dir / "artifacts")
    spec = WheelhouseSpec(
        backend=VllmBackend(backend), python_tag=tag,
        torch_index=cluster.options.get("torch_index", ""),
    )  # fmt: skip
    return ArtifactNeed(
        f"vLLM wheelhouse ({spec.name()})", build_command(backend, tag), spec,
        newest_wheelhouse(store, backend, tag), missing(store, backend, tag),
    )  # fmt: skip


def needs(cfg: Config, cluster: Cluster, backend: str, tag: str) -> list[ArtifactNeed]:
    """The wheelhouse :func:`wheelhouse` takes, and what `artifact build vllm` builds for it
    (none for a wheelhouse the cluster names itself)."""
    if cluster.options.get("artifact"):
        return []
    return [need(cfg, cluster, backend, tag)]


def venv_for(cfg: Config, cluster: Cluster, found: Sequence[vllm.VllmMember]) -> str:
    """Where post-install puts the cluster's venv on its nodes (one per wheelhouse)."""
    return f"{vllm.VENV_ROOT}/{wheelhouse(cfg, cluster, *runtime(found)).name}"


def model_entries(cfg: Config, cluster: Cluster) -> dict[str, dict[str, Any]]:
    """For each model the cluster serves: where it lands on a node and how it is fetched."""

    store = ModelStore(cfg.state_dir / "models")
    out: dict[str, dict[str, Any]] = {}
    for served in cluster.served():
        if served.model in out:
            continue
        model = store.get(served.model)
        dest = f"{vllm.MODEL_ROOT}/{model.name}"
        base = f"{cfg.http_base}/models/{model.name}"
        check, action = fetch_tree_command(base, dest, model.sha256)
        out[model.name] = {
            "dir": dest, "check": check, "action": action,
            "quantization": getattr(model, "quantization", None) or None,
        }  # fmt: skip
    return out


def ray_token(cfg: Config, cluster: Cluster) -> str:
    """The cluster's Ray token (:mod:`provisioner.clusters.keys`); one made before the keys
    folder existed (``<state>/ray/NAME.token``) is kept."""
    old = cfg.state_dir / "ray" / f"{cluster.name}.token"
    new = keys.key_path(cfg.state_dir, cluster.name, "ray")
    if old.is_file() and not new.exists():
        keys.secret(cfg.state_dir, cluster.name, "ray")  # makes the folder, 0700
        new.write_text(old.read_text())
        old.unlink()
    return keys.secret(cfg.state_dir, cluster.name, "ray")


def plan_context(
    cfg: Config, cluster: Cluster, found: Sequence[vllm.VllmMember]
) -> tuple[Download, dict[str, dict[str, Any]]]:
    """(the wheelhouse, each node's extra context)."""

    lay, problems = vllm.layout(cluster, found)
    if problems:
        raise ClusterError(f"{cluster.name}: " + "; ".join(problems))
    artifact = wheelhouse(cfg, cluster, *runtime(found))
    venv = venv_for(cfg, cluster, found)
    lock = f"/var/lib/provisioner/artifacts/{artifact.name}.requirements.txt"
    install = node_install_command(cfg.http_base, artifact.name, venv=venv, requirements=lock)
    models = model_entries(cfg, cluster)
    token = ray_token(cfg, cluster) if lay.ray else ""
    extra = {}
    for m in found:
        ctx = vllm.context(cluster, m, found, venv=venv, models=models)
        ctx["vllm"]["install"] = install
        ctx["ray"]["token"] = token
        extra[m.hostname] = ctx
    return artifact, extra


ARGCHECK = VLLM_ARGCHECK


# A CUDA build of vLLM finds its platform through NVML while it parses arguments: with no
# NVIDIA GPU (a control node) even `vllm serve --help` fails ("Failed to infer device
# type"; seen here with vllm 0.32.0 on cp313). An explicit CPU target is authoritative in
# vLLM's platform resolution and lets the parser run; parsing does not depend on it.
TARGET_DEVICE = "VLLM_TARGET_DEVICE"
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the driver sees


def has_nvidia_gpu(gpus: Path = NVIDIA_GPUS) -> bool:
    return gpus.is_dir() and any(gpus.iterdir())


def check_arguments(
    python: Path, argvs: Sequence[Sequence[str]], target_device: str | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """vLLM's own parser on each argument list, run by ``python`` (a vLLM venv's): the
    vLLM version, and per list what vLLM made of it or ``{"error": ...}``.
    ``target_device``: vLLM's platform, set (``cpu``) where the build's own cannot be found."""
    import json
    import os
    import subprocess

    env = dict(os.environ)
    if target_device:
        env[TARGET_DEVICE] = target_device
    result = subprocess.run(
        [str(python), "-I", str(ARGCHECK)], input=json.dumps([list(a) for a in argvs]),
        capture_output=True, text=True, timeout=600, check=False, env=env,
    )  # fmt: skip
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or len(lines) != len(argvs) + 1:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ClusterError(f"vLLM's argument check did not run: {' / '.join(tail)}")
    return str(lines[0].get("vllm")), lines[1:]


def argument_report(
    cfg: Config, cluster: Cluster, found: Sequence[vllm.VllmMember], progress: Any
) -> tuple[bool, list[str]]:
    """Every served model's vLLM arguments judged by vLLM's own parser, in the control
    venv made from the cluster's wheelhouse (built on first use, ~95 s): (all accepted,
    one line per model). Nodes on another Python than the control node's (a Debian 13
    image: cp313) have their wheelhouse; the control venv is made from the control node's
    own, of the same backend (built first when missing)."""

    backend, tag = runtime(found)
    store = ArtifactStore(cfg.state_dir / "artifacts")
    if tag == python_tag() or cluster.options.get("artifact"):
        folder = store.path(wheelhouse(cfg, cluster, backend, tag).name)
    else:
        own = ensure([need(cfg, cluster, backend, python_tag())], store, build=True,
                     progress=progress)[0]  # fmt: skip
        folder = store.path(own.name)
    python = control_venv(folder, progress=progress)
    lay, _ = vllm.layout(cluster, found)
    head = next(m for m in found if m.hostname == cluster.head)
    models = model_entries(cfg, cluster)
    argvs = [
        vllm.served_argv(cluster, s, lay, head, str(models[s.model]["dir"]))
        for s in cluster.served()
    ]
    parse_on_cpu = backend == "cuda" and not has_nvidia_gpu()
    version, seen = check_arguments(python, argvs, "cpu" if parse_on_cpu else None)
    lines = []
    if parse_on_cpu:
        lines.append(f"no NVIDIA GPU here: vLLM's parser ran with {TARGET_DEVICE}=cpu")
    for served, got in zip(cluster.served(), seen, strict=True):
        if "error" in got:
            lines.append(f"{served.name}: vLLM {version} refuses its arguments: {got['error']}")
        else:
            lines.append(
                f"{served.name}: vLLM {version} accepts: dtype {got['dtype']}, tensor parallel "
                f"{got['tensor_parallel_size']} x pipeline parallel "
                f"{got['pipeline_parallel_size']}, memory share {got['gpu_memory_utilization']}"
            )
    return all("error" not in g for g in seen), lines
