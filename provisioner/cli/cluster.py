"""`provisioner cluster create|list|status|remove` and `postinstall run` (thin: parse,
call, print).

The work is in :mod:`provisioner.clusters`: the spec, the engines, and one module per
operation (create, plan, remove, smoke); the SSH fan-out in
:mod:`provisioner.postinstall.fanout`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Any

from provisioner.cli.common import (
    add_command,
    load_cfg,
    load_cluster,
    open_registry,
    print_json,
    stamped,
    table,
)
from provisioner.clusters import keys, store
from provisioner.clusters.converge import last_convergence
from provisioner.clusters.create import create
from provisioner.clusters.engines import engine_for, engine_names
from provisioner.clusters.plan import cluster_plan, postinstall_plan
from provisioner.clusters.remove import remove
from provisioner.clusters.site import Site
from provisioner.clusters.spec import ClusterError, split
from provisioner.clusters.timing import BootTiming, boot_to_serving, last_smoke
from provisioner.postinstall import fanout
from provisioner.postinstall.plan import NodePlan
from provisioner.postinstall.ssh import Connection
from provisioner.postinstall.vllm import parse_serve
from provisioner.profiles import Engine
from provisioner.records import Cluster
from provisioner.timeline import ago


def _site(args: argparse.Namespace) -> Site:
    cfg = load_cfg(args)
    return Site.open(cfg, open_registry(cfg))


def _spec(args: argparse.Namespace) -> Cluster:
    """The cluster as the command line describes it (not yet checked)."""

    options = dict(o.split("=", 1) for o in args.option or [] if "=" in o)
    if args.artifact:
        options["artifact"] = args.artifact
    nodes = list(split(args.nodes))
    head = args.head or (nodes[0] if nodes else None)
    if head is None:
        raise ClusterError("give --nodes N1,N2 (the first is the head) or --head")
    workers = tuple(split(args.workers)) or tuple(n for n in nodes if n != head)
    try:
        serve = tuple(parse_serve(text, i) for i, text in enumerate(args.serve or []))
    except ValueError as exc:
        raise ClusterError(str(exc)) from exc
    model = args.model or (serve[0].model if serve else None)
    if model is None:
        raise ClusterError("give --model M (or --serve NAME=MODEL:SHARE for vLLM)")
    return Cluster(
        args.name, Engine(args.engine), model, head, workers, args.rpc_network,
        options=options, serve=serve, tensor_parallel=args.tensor_parallel,
        pipeline_parallel=args.pipeline_parallel, gateway=args.gateway,
        front_door=not args.no_front_door,
    )  # fmt: skip


def cmd_cluster_create(args: argparse.Namespace) -> int:
    site = _site(args)
    cluster, warnings = create(site, _spec(args))
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    if cluster.gateway:
        keys.secret(site.cfg.state_dir, cluster.name, "gateway")
        print(f"gateway clients need its key: provisioner cluster key {cluster.name}",
              file=sys.stderr)  # fmt: skip
    if args.json:
        print_json({**json.loads(cluster.to_json()), "warnings": warnings})
    else:
        workers = ", ".join(cluster.workers) or "none"
        serving = ", ".join(f"{s.name}@{s.port}" for s in cluster.served())
        print(f"{cluster.name}: {cluster.engine.value}, head {cluster.head}, "
              f"workers {workers}, serving {serving}")  # fmt: skip
    return 0


def cmd_cluster_list(args: argparse.Namespace) -> int:
    found = store.load_all(open_registry(load_cfg(args), readonly=True))
    if args.json:
        print_json([json.loads(c.to_json()) for c in found])
        return 0
    table(
        ("CLUSTER", "ENGINE", "MODEL", "HEAD", "WORKERS"),
        [(c.name, c.engine.value, c.model, c.head, ",".join(c.workers) or "-") for c in found],
    )
    return 0


def cmd_cluster_status(args: argparse.Namespace) -> int:
    registry = open_registry(load_cfg(args), readonly=True)
    cluster = load_cluster(registry, args.name)
    rows = []
    boots: list[BootTiming | None] = []
    for node in store.members(registry, cluster):
        steps = registry.steps(node.mac)
        last = steps[-1] if steps else None
        boot = boot_to_serving(registry.events(node.mac))
        boots.append(boot)
        rows.append(
            {
                "node": node.hostname,
                "role": cluster.role(node.hostname or ""),
                "state": node.state.value,
                "address": node.ip,
                "profile": node.profile,
                "last_step": last["step"] if last else None,
                "last_status": last["status"] if last else None,
                "boot_to_serving_s": boot.seconds if boot else None,
                "boot": boot.as_dict() if boot else None,
            }
        )
    converged = last_convergence(registry, cluster)
    smoked = last_smoke(registry, cluster)
    if args.json:
        smoke = smoked.as_dict() if smoked else None
        cluster_json = json.loads(cluster.to_json())
        print_json({"cluster": cluster_json, "nodes": rows, "converge": converged, "smoke": smoke})
        return 0
    print(f"{cluster.name}: {cluster.engine.value}, model {cluster.model}")
    mode = "on" if cluster.converge else "paused (cluster resume)"
    if converged is None:
        print(f"converge at boot: {mode}; none yet")
    else:
        outcome = "ok" if converged.get("ok") else f"failed: {converged.get('reason')}"
        print(
            f"converge at boot: {mode}; last {ago(float(str(converged['ts'])))} "
            f"({converged.get('back') or 'no member back'}): {converged.get('stage')} {outcome}"
        )
    if smoked is None:
        print("last smoke: none yet")
    else:
        outcome = "passed" if smoked.passed else f"{smoked.outcome.value}: {smoked.reason}"
        print(f"last smoke: {ago(smoked.ts)} {outcome}")
    table(
        ("NODE", "ROLE", "STATE", "ADDRESS", "PROFILE", "LAST STEP", "BOOT→SERVING"),
        [
            (str(r["node"]), str(r["role"]), str(r["state"]), str(r["address"] or "-"),
             str(r["profile"] or "-"),
             f"{r['last_step']}: {r['last_status']}" if r["last_step"] else "-",
             _boot_cell(boot))
            for r, boot in zip(rows, boots, strict=True)
        ],
    )  # fmt: skip
    return 0


def _boot_cell(boot: BootTiming | None) -> str:
    """``28.5 s`` from power-on to serving; ``(degraded)`` where the boot ended there
    instead; ``-`` when no boot is on the timeline or it is not serving yet."""
    if boot is not None and boot.seconds is not None:
        return f"{boot.seconds:.1f} s"
    if boot is not None and boot.ended is not None:
        return f"({boot.ended.value})"
    return "-"


def cmd_cluster_pause(args: argparse.Namespace) -> int:
    """Converge at boot off (pause) or on (resume) for one cluster."""
    registry = open_registry(load_cfg(args))
    cluster = replace(load_cluster(registry, args.name), converge=args.resume)
    registry.save_cluster(cluster.name, cluster.to_json())
    what = (
        "resumed: members back from a reboot are converged"
        if args.resume
        else ("paused: members back from a reboot are left as they come")
    )
    if args.json:
        print_json({"cluster": cluster.name, "converge": cluster.converge})
    else:
        print(f"{cluster.name}: converge at boot {what}")
    return 0


def cmd_cluster_key(args: argparse.Namespace) -> int:
    """The key a client of the cluster's gateway sends (made on first use; --rotate makes
    a new one, and the old one stops working at once)."""
    site = _site(args)
    cluster = load_cluster(site.registry, args.name)
    if args.rotate:
        keys.key_path(site.cfg.state_dir, cluster.name, "gateway").unlink(missing_ok=True)
    key = keys.secret(site.cfg.state_dir, cluster.name, "gateway")
    url = f"{site.cfg.http_base}/clusters/{cluster.name}/v1"
    if args.json:
        print_json({"cluster": cluster.name, "base_url": url, "api_key": key,
                    "gateway": cluster.gateway})  # fmt: skip
        return 0
    if not cluster.gateway:
        print(f"note: {cluster.name} has no gateway (cluster create --gateway)", file=sys.stderr)
    print(f"OPENAI_BASE_URL={url}\nOPENAI_API_KEY={key}")
    return 0


def cmd_cluster_remove(args: argparse.Namespace) -> int:
    """Stop and remove the cluster's units (and its firewall tables) on every member that
    answers, then forget the cluster; its nodes go back to enrolled."""
    site = _site(args)
    cluster = load_cluster(site.registry, args.name)
    remove(site, cluster, force=args.force, progress=lambda line: print(line, file=sys.stderr))
    if args.json:
        print_json({"removed": json.loads(cluster.to_json())})
    else:
        print(f"{cluster.name}: removed")
    return 0


def _connector(site: Site) -> fanout.Connect:
    def open_one(node_plan: NodePlan) -> Connection:
        node = site.registry.node(node_plan.member.mac)
        assert node is not None
        return site.connect(node)

    return open_one


def cmd_postinstall_run(args: argparse.Namespace) -> int:
    site = _site(args)
    cluster = load_cluster(site.registry, args.cluster)
    if args.dry_run:
        plans = cluster_plan(site, cluster)
        accepted, lines = engine_for(cluster).dry_run(
            site, cluster, check_args=args.check_args, progress=stamped
        )
        for line in lines:
            print(line, file=sys.stderr)
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
    plans = postinstall_plan(site, cluster, build=not args.no_build, progress=stamped)
    progress = (lambda line: None) if args.json else stamped
    results = fanout.run(site.registry, plans, _connector(site), progress)
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
    create.add_argument("--engine", default=Engine.LLAMA_RPC.value, choices=engine_names())
    create.add_argument("--model", help="a model in the store (model add)")
    create.add_argument("--nodes", default="", help="N1,N2,...: the members, the head first")
    create.add_argument("--head", help="the node that serves the API (default: first of --nodes)")
    create.add_argument("--workers", default="", help="node1,node2 (llama.cpp RPC workers)")
    create.add_argument(
        "--serve", action="append", metavar="NAME=MODEL[:SHARE][@PORT]",
        help="vLLM: a model the head serves under NAME with SHARE of the accelerator's "
        "memory (several: shares add up to less than 1.0); ports from 8000. llama-rpc: one "
        "NAME=MODEL, the name clients ask for (default: the model's). Clusters that serve one "
        "NAME are replicas of it behind the gateway (/v1)",
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
    create.add_argument(
        "--no-front-door", action="store_true",
        help="keep its models out of the gateway's /v1 (the front door)",
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
        " ray_object_store_bytes, torch_index (the wheel index a missing wheelhouse's torch"
        " comes from)",
    )
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=cmd_cluster_create)
    clist = csub.add_parser("list", help="every cluster")
    clist.add_argument("--json", action="store_true")
    clist.set_defaults(func=cmd_cluster_list)
    status = csub.add_parser(
        "status",
        help="a cluster's members, states and last steps, its last smoke and convergence, "
        "and each member's last boot from power-on to serving",
    )
    status.add_argument("name")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_cluster_status)
    for verb, resume, text in (
        ("pause", False, "stop converging its members when they come back from a reboot"),
        ("resume", True, "converge its members again when they come back (the default)"),
    ):
        toggle = add_command(csub, verb, cmd_cluster_pause, text)
        toggle.add_argument("name")
        toggle.set_defaults(resume=resume)
    key = add_command(
        csub, "key", cmd_cluster_key, "the gateway's client key and base URL (OPENAI_*)"
    )
    key.add_argument("name")
    key.add_argument("--rotate", action="store_true", help="a new key; the old one stops")
    remove = add_command(
        csub, "remove", cmd_cluster_remove, "stop its units on the members and forget it"
    )
    remove.add_argument("name")
    remove.add_argument(
        "--force", action="store_true", help="forget it even where a member does not answer"
    )

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
    prun.add_argument(
        "--no-build", action="store_true",
        help="refuse when an artifact the plan needs is missing, instead of building it "
        "(as artifact build llama.cpp / vllm --backend B would)",
    )  # fmt: skip
    prun.add_argument("--json", action="store_true")
    prun.set_defaults(func=cmd_postinstall_run)
