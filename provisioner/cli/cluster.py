"""`provisioner cluster create|list|status|remove` and `postinstall run` (thin).

The work is elsewhere: clusters.py (the model), postinstall/plan.py + engine.py (the
steps, over SSH), cluster_vllm.py (what vLLM clusters add). This module finds the pieces in
the registry and the stores, wires them, and prints. `smoke` is in smoke_cli.py; it takes
:func:`host_keys` and :func:`models_dir` from here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from provisioner.cli.common import load_cfg, open_registry, print_json, stamped, table
from provisioner.clusters import spec as clusters
from provisioner.clusters.spec import Cluster, ClusterError
from provisioner.config import Config
from provisioner.postinstall import fanout
from provisioner.postinstall.plan import Download, Member, NodePlan, plan
from provisioner.postinstall.ssh import Connection, HostKey, connect
from provisioner.profiles import ProfileSet, load_profiles
from provisioner.records import Node
from provisioner.registry import Registry

LLAMA_PREFIX = "llama.cpp-"


def artifacts_dir(cfg: Config) -> Path:
    return cfg.state_dir / "artifacts"


def models_dir(cfg: Config) -> Path:
    return cfg.state_dir / "models"


def host_keys(registry: Registry, node: Node) -> list[HostKey]:
    """The host keys the node's agent last reported (the ones post-install trusts)."""
    inventory = registry.inventory(node.mac)
    if inventory is None:
        return []
    return [HostKey(k.type, k.public_key) for k in inventory.ssh_host_keys if k.public_key]


def _member(registry: Registry, node: Node, profiles: ProfileSet) -> Member:
    profile = profiles.get(node.profile or "")
    inventory = registry.inventory(node.mac)
    threads = (inventory.cpu.threads if inventory and inventory.cpu else None) or 1
    return Member(
        hostname=node.hostname or node.mac,
        mac=node.mac,
        address=node.ip or "",
        profile=node.profile or "",
        drivers=profile.drivers if profile else (),
        engine_defaults=profile.engine_defaults.__dict__ if profile else None,
        threads=max(1, threads),
    )


def runtime(cfg: Config, cluster: Cluster) -> Download:
    """The llama.cpp artifact the cluster runs: its own, else the newest CPU build."""
    from provisioner.artifacts.store import ArtifactStore

    store = ArtifactStore(artifacts_dir(cfg))
    name = cluster.options.get("artifact")
    if name:
        manifest = store.get(name)
    else:
        found = [m for m in store.list() if m.name.startswith(LLAMA_PREFIX) and "-cpu-" in m.name]
        if not found:
            raise ClusterError(
                f"no llama.cpp build in {store.root}: provisioner artifact build llama.cpp"
            )
        manifest = max(found, key=lambda m: m.built_at)
    return Download(
        manifest.name,
        manifest.file,
        f"{cfg.http_base}/artifacts/{manifest.file}",
        manifest.sha256,
        manifest.size,
        binaries=dict(manifest.binaries),
    )


def model_download(cfg: Config, cluster: Cluster) -> Download:
    from provisioner.models.store import ModelStore

    model = ModelStore(models_dir(cfg)).get(cluster.model)
    return Download(
        model.name, model.file, f"{cfg.http_base}/models/{model.file}", model.sha256, model.size
    )


def cluster_plan(cfg: Config, registry: Registry, cluster: Cluster) -> list[NodePlan]:
    profiles = load_profiles(cfg.cluster.profiles_dir)
    nodes = clusters.members(registry, cluster)
    problems = []
    for node in nodes:
        if node.state not in clusters.READY_STATES:
            problems.append(f"{node.hostname}: {node.state.value}, not booted on its image yet")
        elif not node.ip:
            problems.append(f"{node.hostname}: no address known")
    if problems:
        raise ClusterError(f"{cluster.name}: " + "; ".join(problems))
    members = [_member(registry, n, profiles) for n in nodes]
    if cluster.engine == "vllm":
        from provisioner.clusters import vllm as cluster_vllm

        found = cluster_vllm.members(registry, cluster, profiles)
        artifact, extra, ray = cluster_vllm.plan_context(cfg, cluster, found)
        return plan(cluster, members, control_url=cfg.http_base, artifact=artifact,
                    model=None, extra=extra, ray=ray)  # fmt: skip
    return plan(
        cluster,
        members,
        control_url=cfg.http_base,
        artifact=runtime(cfg, cluster),
        model=model_download(cfg, cluster),
    )


# ------------------------------------------------------------------ commands


def _spec(args: argparse.Namespace) -> Cluster:
    """The cluster as the command line describes it (not yet checked)."""
    from provisioner.postinstall.vllm import parse_serve

    options = dict(o.split("=", 1) for o in args.option or [] if "=" in o)
    if args.artifact:
        options["artifact"] = args.artifact
    nodes = list(clusters.split(args.nodes))
    head = args.head or (nodes[0] if nodes else None)
    if head is None:
        raise ClusterError("give --nodes N1,N2 (the first is the head) or --head")
    workers = tuple(clusters.split(args.workers)) or tuple(n for n in nodes if n != head)
    try:
        serve = tuple(parse_serve(text, i) for i, text in enumerate(args.serve or []))
    except ValueError as exc:
        raise ClusterError(str(exc)) from exc
    if serve and args.engine != "vllm":
        raise ClusterError("--serve is for --engine vllm (llama-rpc serves --model)")
    model = args.model or (serve[0].model if serve else None)
    if model is None:
        raise ClusterError("give --model M (or --serve NAME=MODEL:SHARE for vLLM)")
    if args.engine == "vllm" and not serve:
        from provisioner.clusters.spec import Served
        from provisioner.postinstall.vllm import FIRST_PORT

        serve = (Served(model, model, None, FIRST_PORT),)
    return Cluster(
        args.name, args.engine, model, head, workers, args.rpc_network, options=options,
        serve=serve, tensor_parallel=args.tensor_parallel,
        pipeline_parallel=args.pipeline_parallel, gateway=args.gateway,
    )  # fmt: skip


def cmd_cluster_create(args: argparse.Namespace) -> int:
    from provisioner.errors import ModelError
    from provisioner.models.store import ModelStore

    cfg = load_cfg(args)
    registry = open_registry(cfg)
    cluster = _spec(args)
    profiles = load_profiles(cfg.cluster.profiles_dir)
    nodes = {m: registry.node(m) for m in cluster.members}
    by_member = {
        m: profiles.get(n.profile) if n is not None and n.profile else None
        for m, n in nodes.items()
    }
    problems = clusters.validate(cluster, nodes, by_member)
    store = ModelStore(models_dir(cfg))
    kinds: dict[str, str | None] = {}
    for served in cluster.served():
        try:
            kinds[served.model] = store.get(served.model).kind.value
        except ModelError as exc:
            kinds[served.model] = None
            if cluster.engine != "vllm":
                problems.append(f"model: {exc} (provisioner model add FILE --name {served.model})")
    if cluster.engine == "llama-rpc" and kinds.get(cluster.model) not in (None, "gguf"):
        problems.append(f"model {cluster.model!r} is not a GGUF file: llama.cpp needs one")
    warnings: list[str] = []
    if cluster.engine == "vllm" and not problems:
        from provisioner.clusters import vllm as cluster_vllm

        found = cluster_vllm.members(registry, cluster, profiles)
        more, warnings = cluster_vllm.check(cluster, found, kinds)
        others = [clusters.load(registry, n) for n in registry.cluster_names() if n != cluster.name]
        problems += more + cluster_vllm.ray_clashes(cluster, others)
    if problems:
        raise ClusterError(f"cluster {cluster.name} refused: " + "; ".join(problems))
    registry.save_cluster(cluster.name, cluster.to_json())
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    if args.json:
        print_json({**json.loads(cluster.to_json()), "warnings": warnings})
    else:
        workers = ", ".join(cluster.workers) or "none"
        serving = ", ".join(f"{s.name}@{s.port}" for s in cluster.served())
        print(f"{cluster.name}: {cluster.engine}, head {cluster.head}, workers {workers}, "
              f"serving {serving}")  # fmt: skip
    return 0


def cmd_cluster_list(args: argparse.Namespace) -> int:
    registry = open_registry(load_cfg(args))
    found = [clusters.load(registry, n) for n in registry.cluster_names()]
    if args.json:
        print_json([json.loads(c.to_json()) for c in found])
        return 0
    table(
        ("CLUSTER", "ENGINE", "MODEL", "HEAD", "WORKERS"),
        [(c.name, c.engine, c.model, c.head, ",".join(c.workers) or "-") for c in found],
    )
    return 0


def cmd_cluster_status(args: argparse.Namespace) -> int:
    registry = open_registry(load_cfg(args))
    cluster = clusters.load(registry, args.name)
    rows = []
    for node in clusters.members(registry, cluster):
        steps = registry.steps(node.mac)
        last = steps[-1] if steps else None
        rows.append(
            {
                "node": node.hostname,
                "role": cluster.role(node.hostname or ""),
                "state": node.state.value,
                "address": node.ip,
                "profile": node.profile,
                "last_step": last["step"] if last else None,
                "last_status": last["status"] if last else None,
            }
        )
    if args.json:
        print_json({"cluster": json.loads(cluster.to_json()), "nodes": rows})
        return 0
    print(f"{cluster.name}: {cluster.engine}, model {cluster.model}")
    table(
        ("NODE", "ROLE", "STATE", "ADDRESS", "PROFILE", "LAST STEP"),
        [
            (str(r["node"]), str(r["role"]), str(r["state"]), str(r["address"] or "-"),
             str(r["profile"] or "-"),
             f"{r['last_step']}: {r['last_status']}" if r["last_step"] else "-")
            for r in rows
        ],
    )  # fmt: skip
    return 0


def cmd_cluster_remove(args: argparse.Namespace) -> int:
    """Stop and remove the cluster's units (and Ray's firewall table) on every member that
    answers, then forget the cluster; its nodes go back to enrolled."""
    from provisioner.smoke.cluster import units_of
    from provisioner.states import NodeEvent

    cfg = load_cfg(args)
    registry = open_registry(cfg)
    cluster = clusters.load(registry, args.name)
    nodes = clusters.members(registry, cluster)
    ray = cluster.engine == "vllm" and len(cluster.members) > 1
    key = cfg.state_dir / "ssh" / "id_ed25519"
    problems = []
    for node in nodes:
        hostname = node.hostname or node.mac
        units = units_of(cluster, hostname, ray)
        command = " ; ".join(
            [f"systemctl disable --now {u} 2>/dev/null; rm -f /etc/systemd/system/{u}"
             for u in units] + ["systemctl daemon-reload"]
            + (["nft delete table inet provisioner_ray 2>/dev/null; true"] if ray else [])
        )  # fmt: skip
        try:
            conn = connect(hostname, node.ip or "", host_keys(registry, node), key)
            try:
                conn.run(command, timeout=120)
            finally:
                conn.close()
        except Exception as exc:  # a member that is down keeps nothing running anyway
            problems.append(f"{hostname}: {exc}")
            if not args.force:
                continue
        registry.transition(node.mac, NodeEvent.RELEASE, reason=f"cluster {cluster.name} removed")
        print(f"{hostname}: removed {', '.join(units)}", file=sys.stderr)
    if problems and not args.force:
        raise ClusterError(
            f"{cluster.name}: not removed, some members did not answer ({'; '.join(problems)});"
            " --force forgets it anyway"
        )
    registry.delete_cluster(cluster.name)
    (cfg.state_dir / "ray" / f"{cluster.name}.token").unlink(missing_ok=True)
    print(f"{cluster.name}: removed")
    return 0


def _connector(cfg: Config, registry: Registry) -> fanout.Connect:
    key = cfg.state_dir / "ssh" / "id_ed25519"

    def open_one(node_plan: NodePlan) -> Connection:
        node = registry.node(node_plan.member.mac)
        assert node is not None
        return connect(node_plan.member.hostname, node_plan.member.address,
                       host_keys(registry, node), key)  # fmt: skip

    return open_one


def cmd_postinstall_run(args: argparse.Namespace) -> int:
    cfg = load_cfg(args)
    registry = open_registry(cfg)
    cluster = clusters.load(registry, args.cluster)
    plans = cluster_plan(cfg, registry, cluster)
    accepted = True
    if args.dry_run and cluster.engine == "vllm":
        from provisioner.clusters import vllm as cluster_vllm

        found = cluster_vllm.members(registry, cluster, load_profiles(cfg.cluster.profiles_dir))
        _, warnings = cluster_vllm.check(cluster, found, {})
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr)
        if args.check_args:
            accepted, lines = cluster_vllm.argument_report(cfg, cluster, found, stamped)
            for line in lines:
                print(line, file=sys.stderr)
    if args.dry_run:
        if args.json:
            print_json(
                [
                    {"node": p.member.hostname, "role": p.role,
                     "steps": [{"name": s.name, "recipe": s.recipe, "kind": s.kind,
                                "what": s.describe()} for s in p.steps]}
                    for p in plans
                ]
            )  # fmt: skip
            return 0 if accepted else 1
        for p in plans:
            print(f"{p.member.hostname} ({p.role}, {p.member.address}, {p.member.profile}):")
            for i, s in enumerate(p.steps, 1):
                print(f"  {i}. [{s.recipe}] {s.name}: {s.describe()}")
        return 0 if accepted else 1
    progress = (lambda line: None) if args.json else stamped
    results = fanout.run(registry, plans, _connector(cfg, registry), progress)
    if args.json:
        print_json([r.as_dict() for r in results])
    else:
        for r in results:
            if not r.ok:
                print(f"{r.hostname}: failed: {r.error}", file=sys.stderr)
    return 0 if all(r.ok for r in results) else 1


def add_cluster_commands(sub: Any) -> None:
    cluster = sub.add_parser("cluster", help="clusters: which nodes serve which model")
    csub = cluster.add_subparsers(dest="subcommand", required=True)
    create = csub.add_parser("create", help="a cluster from enrolled nodes")
    create.add_argument("name")
    create.add_argument("--engine", default="llama-rpc", choices=clusters.ENGINES)
    create.add_argument("--model", help="a model in the store (model add)")
    create.add_argument("--nodes", default="", help="N1,N2,...: the members, the head first")
    create.add_argument("--head", help="the node that serves the API (default: first of --nodes)")
    create.add_argument("--workers", default="", help="node1,node2 (llama.cpp RPC workers)")
    create.add_argument(
        "--serve", action="append", metavar="NAME=MODEL[:SHARE][@PORT]",
        help="vLLM: a model the head serves under NAME with SHARE of the accelerator's "
        "memory (several: shares add up to less than 1.0); ports from 8000",
    )  # fmt: skip
    create.add_argument(
        "--tensor-parallel", type=int, help="vLLM: GPUs per copy (default: a node's)"
    )
    create.add_argument(
        "--pipeline-parallel", type=int, help="vLLM: stages across nodes (default: the nodes)"
    )
    create.add_argument(
        "--gateway", action="store_true",
        help="one OpenAI base URL on the control node: /clusters/NAME/v1",
    )  # fmt: skip
    create.add_argument("--rpc-network", help="interface for RPC traffic (e.g. ib0)")
    create.add_argument(
        "--artifact", help="a llama.cpp build or vLLM wheelhouse in the artifact store"
    )
    create.add_argument(
        "--option",
        action="append",
        help="KEY=VALUE. llama-rpc: parallel, ctx_size, ngl, threads (default: the node's CPU"
        " threads; 1 where nodes share cores, as lab containers do), memory_max. vllm:"
        " max_model_len, dtype, quantization, enforce_eager, kv_cache_gib (CPU backend),"
        " ray_object_store_bytes",
    )
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=cmd_cluster_create)
    clist = csub.add_parser("list", help="every cluster")
    clist.add_argument("--json", action="store_true")
    clist.set_defaults(func=cmd_cluster_list)
    status = csub.add_parser("status", help="a cluster's members, states and last steps")
    status.add_argument("name")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_cluster_status)
    remove = csub.add_parser("remove", help="stop its units on the members and forget it")
    remove.add_argument("name")
    remove.add_argument(
        "--force", action="store_true", help="forget it even where a member does not answer"
    )
    remove.set_defaults(func=cmd_cluster_remove)

    post = sub.add_parser("postinstall", help="drivers, runtime and units on a cluster's nodes")
    psub = post.add_subparsers(dest="subcommand", required=True)
    prun = psub.add_parser("run", help="run every member's steps in parallel over SSH")
    prun.add_argument("cluster")
    prun.add_argument("--dry-run", action="store_true", help="print each node's plan")
    prun.add_argument(
        "--check-args", action="store_true",
        help="with --dry-run, vLLM clusters: have vLLM's own parser judge each served "
        "model's arguments (in a control-node venv made from the wheelhouse)",
    )  # fmt: skip
    prun.add_argument("--json", action="store_true")
    prun.set_defaults(func=cmd_postinstall_run)
