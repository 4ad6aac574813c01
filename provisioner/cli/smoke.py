"""`provisioner smoke CLUSTER` (thin): prove a cluster serves, and record the verdict.

The checks are in smoke/ (client, cluster, run, ray, load, report); this module picks them
for the cluster's engine (llama.cpp RPC or vLLM), opens one SSH connection per member, runs
them, records each check as a step of every member and moves the members to serving,
degraded (only floors missed) or failed.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any

from provisioner.cli.cluster import host_keys, models_dir
from provisioner.cli.common import load_cfg, open_registry, print_json, stamped
from provisioner.clusters import spec as clusters
from provisioner.clusters.spec import Cluster
from provisioner.config import Config
from provisioner.postinstall.ssh import Connection, connect
from provisioner.profiles import ProfileSet, load_profiles
from provisioner.records import Node
from provisioner.registry import Registry


@dataclass(frozen=True)
class Site:
    """What cmd_smoke loaded once: the configuration, the registry, the profiles."""

    cfg: Config
    registry: Registry
    profiles: ProfileSet


def _smoke_llama(
    args: argparse.Namespace, cluster: Cluster, nodes: dict[str, Node],
    conns: dict[str, Connection], floors: Any, progress: Any,
) -> Any:  # fmt: skip
    from provisioner.smoke.client import SmokeHttpError, wait_healthy
    from provisioner.smoke.cluster import head_log, restart_check, sampler, unit_checks
    from provisioner.smoke.run import Worker, run_smoke

    head = nodes[cluster.head]
    endpoint = f"http://{head.ip}:{cluster.http_port}"
    progress(f"smoke {cluster.name}: {endpoint}, model {cluster.model}")
    workers = [
        Worker(f"{nodes[w].ip}:{cluster.rpc_port}", sampler(conns[w])) for w in cluster.workers
    ]
    units = unit_checks(conns, cluster)
    try:  # a head that was just (re)started loads its model first: 503 until then
        waited = wait_healthy(endpoint, timeout=args.wait)
        progress(f"smoke {cluster.name}: healthy after {waited:.1f} s")
    except SmokeHttpError as exc:
        progress(f"smoke {cluster.name}: {exc}")
    report = run_smoke(
        cluster.name, endpoint, cluster.model, floors, head_log(conns[cluster.head]), workers
    )
    report = report.with_checks(units)
    if args.requests:
        report = report.with_checks(_load(args, endpoint, cluster.model, progress))
    if args.restart:  # a worker's RPC server, or a lone head's server
        host = cluster.workers[0] if cluster.workers else cluster.head
        unit = "llama-rpc.service" if cluster.workers else "llama-server.service"
        report = report.with_checks(
            [restart_check(conns[host], host, unit, endpoint, cluster.model, progress)]
        )
    return report


def _smoke_vllm(
    args: argparse.Namespace, cluster: Cluster, nodes: dict[str, Node],
    conns: dict[str, Connection], floors: Any, progress: Any, *, site: Site,
) -> Any:  # fmt: skip
    """Per served model: health, /v1/models, a streamed completion, TTFT, tokens/s (and
    the load check); every unit; Ray's view of every member; a restart."""
    from dataclasses import replace

    from provisioner.postinstall.vllm import unit_name
    from provisioner.smoke.client import SmokeHttpError, wait_healthy
    from provisioner.smoke.cluster import VLLM_RESTART_WAIT_S, restart_check, unit_checks
    from provisioner.smoke.report import Report
    from provisioner.smoke.run import (
        embedding_check,
        generative,
        health_check,
        models_check,
        run_smoke,
    )

    head = nodes[cluster.head]
    ray = len(cluster.members) > 1
    architectures = _architectures(site, cluster)
    checks = list(unit_checks(conns, cluster, ray))
    streams: dict[str, Any] = {}
    for served in cluster.served():
        endpoint = f"http://{head.ip}:{served.port}"
        progress(f"smoke {cluster.name}: {endpoint}, serving {served.name} ({served.model})")
        try:  # vLLM answers /health once its model is loaded
            waited = wait_healthy(endpoint, timeout=args.wait)
            progress(f"smoke {cluster.name}: {served.name} healthy after {waited:.1f} s")
        except SmokeHttpError as exc:
            progress(f"smoke {cluster.name}: {served.name}: {exc}")
        if not generative(architectures.get(served.model, ())):
            found = [health_check(endpoint), models_check(endpoint, served.name),
                     embedding_check(endpoint, served.name)]  # fmt: skip
            checks += [replace(c, name=f"{c.name}[{served.name}]") for c in found]
            continue
        one = run_smoke(cluster.name, endpoint, served.name, floors, "")
        checks += [replace(c, name=f"{c.name}[{served.name}]") for c in one.checks]
        streams[served.name] = dict(one.stream)
        if args.requests:
            checks += _load(args, endpoint, served.name, progress)
    if ray:
        checks += _ray_checks(site, cluster, nodes, conns)
    if args.restart:
        first = cluster.served()[0]
        endpoint = f"http://{head.ip}:{first.port}"
        checks.append(restart_check(
            conns[cluster.head], cluster.head, unit_name(cluster, first), endpoint, first.name,
            progress, VLLM_RESTART_WAIT_S,
        ))  # fmt: skip
    return Report(cluster.name, tuple(checks), streams)


def _architectures(site: Site, cluster: Cluster) -> dict[str, tuple[str, ...]]:
    """Each served model's config.json architectures, from the model store."""
    from provisioner.errors import ModelError
    from provisioner.models.store import ModelStore

    store = ModelStore(models_dir(site.cfg))
    found: dict[str, tuple[str, ...]] = {}
    for served in cluster.served():
        try:
            found[served.model] = tuple(store.get(served.model).architectures)
        except ModelError:
            found[served.model] = ()
    return found


def _ray_checks(
    site: Site, cluster: Cluster, nodes: dict[str, Node], conns: dict[str, Connection]
) -> list[Any]:
    """What Ray on the head says of every member (alive, with its CPUs and GPUs), asked
    with the ``ray`` of the venv post-install made from the cluster's wheelhouse."""
    from provisioner.clusters import vllm as cluster_vllm
    from provisioner.postinstall.vllm import RAY_PORTS, TOKEN_PATH
    from provisioner.smoke.ray import ray_checks, ray_nodes_command

    found = cluster_vllm.members(site.registry, cluster, site.profiles)
    venv = cluster_vllm.venv_for(site.cfg, cluster, found)
    head = conns[cluster.head]
    address = f"{nodes[cluster.head].ip}:{RAY_PORTS['port']}"
    command = (
        f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={TOKEN_PATH} "
        f"{ray_nodes_command(venv + '/bin', address)}"
    )
    result = head.run(command, timeout=120)
    addresses = {h: n.ip or "" for h, n in nodes.items()}
    return list(ray_checks(result.stdout + result.stderr, addresses, None))


def _load(args: argparse.Namespace, endpoint: str, model: str, progress: Any) -> list[Any]:
    from provisioner.smoke.load import load_checks

    progress(f"smoke: load check on {model}: {args.requests} requests, "
             f"{args.concurrency} at a time")  # fmt: skip
    return list(load_checks(endpoint, model, args.requests, args.concurrency,
                            min_rpm=args.min_rpm, max_p99_s=args.max_p99_s))  # fmt: skip


def cmd_smoke(args: argparse.Namespace) -> int:
    from provisioner.smoke.report import render_table
    from provisioner.smoke.run import Floors
    from provisioner.states import NodeEvent

    cfg = load_cfg(args)
    registry = open_registry(cfg)
    cluster = clusters.load(registry, args.cluster)
    nodes = {n.hostname or n.mac: n for n in clusters.members(registry, cluster)}
    profiles = load_profiles(cfg.cluster.profiles_dir)
    head = nodes[cluster.head]
    profile = profiles.get(head.profile or "")
    floors = Floors.from_profile(profile.smoke) if profile else Floors()
    if args.min_tokens_per_s is not None or args.max_ttft_s is not None:
        floors = Floors(
            args.min_tokens_per_s if args.min_tokens_per_s is not None else floors.min_tokens_per_s,
            args.max_ttft_s if args.max_ttft_s is not None else floors.max_ttft_s,
        )
    progress = (lambda line: None) if args.json else stamped
    key = cfg.state_dir / "ssh" / "id_ed25519"
    conns: dict[str, Connection] = {}
    try:
        for hostname, node in nodes.items():
            conns[hostname] = connect(hostname, node.ip or "", host_keys(registry, node), key)
        if cluster.engine == "vllm":
            site = Site(cfg, registry, profiles)
            report = _smoke_vllm(args, cluster, nodes, conns, floors, progress, site=site)
        else:
            report = _smoke_llama(args, cluster, nodes, conns, floors, progress)
    finally:
        for conn in conns.values():
            conn.close()
    run_id = f"smoke-{int(time.time())}"
    floor_checks = ("ttft_s", "decode_tokens_per_s", "load_rpm", "load_p99_s")
    floors_missed = [c for c in report.failed if c.name.split("[")[0] in floor_checks]
    for node in nodes.values():
        for check in report.checks:
            registry.add_step(run_id, node.mac, f"smoke:{check.name}",
                              "ok" if check.passed else "failed", None,
                              json.dumps(check.to_json()), 0.0)  # fmt: skip
        if report.passed:
            registry.transition(node.mac, NodeEvent.SMOKE_PASS, reason="smoke passed")
        elif report.failed and len(floors_missed) == len(report.failed):
            below = "below floor: " + ", ".join(c.name for c in floors_missed)
            registry.transition(node.mac, NodeEvent.SMOKE_DEGRADED, reason=below)
        else:
            names = ", ".join(c.name for c in report.failed)
            registry.transition(node.mac, NodeEvent.FAIL, reason=f"smoke failed: {names}")
    if args.json:
        print_json(report.to_json())
    else:
        print(render_table(report))
    return 0 if report.passed else 1


def add_smoke_command(sub: Any) -> None:
    smoke = sub.add_parser("smoke", help="prove a cluster serves: health, completion, TTFT, tok/s")
    smoke.add_argument("cluster")
    smoke.add_argument("--json", action="store_true")
    smoke.add_argument(
        "--no-restart", dest="restart", action="store_false",
        help="skip the restart check (kill a worker's RPC server, or the first vLLM server,"
        " and see it come back)",
    )  # fmt: skip
    smoke.add_argument("--min-tokens-per-s", type=float, help="override the profile's floor")
    smoke.add_argument(
        "--wait", type=float, default=300, help="seconds to wait for the head to load (300)"
    )
    smoke.add_argument("--max-ttft-s", type=float, help="override the profile's bound")
    smoke.add_argument(
        "--requests", type=int, default=0,
        help="a load check too: N completions per served model (requests/min, p50/p99)",
    )  # fmt: skip
    smoke.add_argument("--concurrency", type=int, default=4, help="load check: at a time (4)")
    smoke.add_argument("--min-rpm", type=float, help="load check: requests per minute, at least")
    smoke.add_argument("--max-p99-s", type=float, help="load check: p99 latency, at most")
    smoke.set_defaults(func=cmd_smoke)
