"""vLLM: one OpenAI server per served model on the head, Ray under it across nodes.

The planning is pure (:mod:`provisioner.postinstall.vllm`); what it needs from the
registry and the stores is in :mod:`.vllm_site`. Smoke checks each served model (a
completion, or an embedding for an embedding model), every unit, Ray's view of every
member and a restart.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from provisioner.clusters import keys
from provisioner.clusters.engines import base, vllm_fit, vllm_site
from provisioner.clusters.engines.artifacts import ArtifactNeed
from provisioner.clusters.engines.base import Progress, SmokeOptions, SmokeTarget
from provisioner.clusters.site import Site
from provisioner.clusters.spec import ClusterError
from provisioner.clusters.store import load_all
from provisioner.errors import ModelError
from provisioner.models.store import ModelStore
from provisioner.postinstall import vllm
from provisioner.postinstall.plan import Member, NodePlan, plan
from provisioner.postinstall.ssh import Connection
from provisioner.profiles import Engine
from provisioner.records import Cluster, Served
from provisioner.smoke.cluster import (
    VLLM_RESTART_WAIT_S,
    death_watch,
    restart_check,
    unit_checks,
)
from provisioner.smoke.ray import ray_checks, ray_nodes_command
from provisioner.smoke.report import Check, Report
from provisioner.smoke.run import embedding_check, generative, health_check, models_check, run_smoke


class VllmEngine:
    kind = Engine.VLLM

    def complete(self, cluster: Cluster) -> Cluster:
        if cluster.serve:
            return cluster
        return replace(
            cluster, serve=(Served(cluster.model, cluster.model, None, vllm.FIRST_PORT),)
        )

    def check_models(self, cluster: Cluster, model_kinds: Mapping[str, str | None]) -> list[str]:
        return []  # judged with the rest in check(): a vLLM model is a Hugging Face folder

    def check(
        self, site: Site, cluster: Cluster, model_kinds: Mapping[str, str | None]
    ) -> tuple[list[str], list[str]]:
        found = vllm_site.site_members(site.cfg, site.registry, cluster, site.profiles)
        problems, warnings = vllm_site.check(cluster, found, model_kinds)
        problems += vllm_fit.problems(site.cfg, cluster, found)
        others = [c for c in load_all(site.registry) if c.name != cluster.name]
        return problems + vllm_site.ray_clashes(cluster, others), warnings

    def recipes(self, cluster: Cluster) -> tuple[str, ...]:
        return ("vllm", "ray") if vllm.uses_ray(cluster) else ("vllm",)

    def needs(self, site: Site, cluster: Cluster) -> list[ArtifactNeed]:
        found = vllm_site.site_members(site.cfg, site.registry, cluster, site.profiles)
        return vllm_site.needs(site.cfg, cluster, *vllm_site.runtime(found))

    def plan(self, site: Site, cluster: Cluster, members: Sequence[Member]) -> list[NodePlan]:
        found = vllm_site.site_members(site.cfg, site.registry, cluster, site.profiles)
        unfit = vllm_fit.problems(site.cfg, cluster, found)
        if unfit:  # before any node is touched
            raise ClusterError(f"{cluster.name}: " + "; ".join(unfit))
        artifact, extra = vllm_site.plan_context(site.cfg, cluster, found)
        ports = [s.port for s in cluster.served()]
        for hostname, ctx in extra.items():
            head = hostname == cluster.head
            ctx["firewall"] = {"control_only": ports if head else [], "head_only": []}
        return plan(
            cluster, members, control_url=site.cfg.http_base, artifact=artifact, model=None,
            engine_recipes=self.recipes(cluster), extra=extra,
            engine_key=keys.secret(site.cfg.state_dir, cluster.name, "engine"),
            gateways=site.cfg.gateway.hosts,
            exporter_port=site.cfg.prometheus.node_exporter_port,
            scrapers=site.cfg.prometheus.hosts,
        )  # fmt: skip

    def teardown_context(self, cluster: Cluster) -> dict[str, Any]:
        served = [{"name": s.name, "unit": vllm.unit_name(cluster, s)} for s in cluster.served()]
        return {"vllm": {"served": served}, "ray": {"unit": vllm.ray_unit(cluster)}}

    def forget(self, site: Site, cluster: Cluster) -> None:
        return None  # its Ray token is one of the cluster's keys

    def dry_run(
        self, site: Site, cluster: Cluster, *, check_args: bool, progress: Progress
    ) -> tuple[bool, list[str]]:
        found = vllm_site.site_members(site.cfg, site.registry, cluster, site.profiles)
        _, warnings = vllm_site.check(cluster, found, {})
        lines = [f"warning: {w}" for w in warnings]
        if not check_args:
            return True, lines
        accepted, verdicts = vllm_site.argument_report(site.cfg, cluster, found, progress)
        return accepted, lines + verdicts

    def smoke(
        self, site: Site, target: SmokeTarget, options: SmokeOptions, progress: Progress
    ) -> Report:
        """Per served model: health, /v1/models, a streamed completion, TTFT, tokens/s (and
        the load check); every unit; Ray's view of every member; a restart."""

        cluster = target.cluster
        architectures = _architectures(site, cluster)
        checks: list[Check] = list(unit_checks(target.conns, base.units_by_host(self, cluster)))
        down = {c.name: c for c in checks if not c.passed}
        streams: dict[str, Any] = {}
        for served in cluster.served():
            endpoint = target.endpoint(served.port)
            unit = down.get(f"unit[{cluster.head}:{vllm.unit_name(cluster, served)}]")
            head = target.conns[cluster.head]
            if unit is not None and _stays_down(head, vllm.unit_name(cluster, served)):
                # a crash loop (no GPU, a bad argument): its own error now, not a timeout
                progress(f"smoke {cluster.name}: {served.name}'s server is {unit.value}")
                detail = f"its server is {unit.value}: {unit.detail or 'no error logged'}"
                checks.append(Check(f"health[{served.name}]", False, unit.value, 200, detail))
                continue
            progress(f"smoke {cluster.name}: {endpoint}, serving {served.name} ({served.model})")
            watch = death_watch(head, vllm.unit_name(cluster, served))
            label = f"{cluster.name}: {served.name}"
            died = base.wait_healthy(endpoint, options.wait_s, label, progress, watch)
            if died is not None:  # e.g. no GPU: vLLM's own error, at once, not a timeout
                checks.append(Check(f"health[{served.name}]", False, None, 200, died))
                continue
            if not generative(architectures.get(served.model, ())):
                found = [health_check(endpoint), models_check(endpoint, served.name),
                         embedding_check(endpoint, served.name)]  # fmt: skip
                checks += [replace(c, name=f"{c.name}[{served.name}]") for c in found]
                continue
            one = run_smoke(cluster.name, endpoint, served.name, target.floors, "")
            checks += [replace(c, name=f"{c.name}[{served.name}]") for c in one.checks]
            streams[served.name] = dict(one.stream)
            checks += base.load_checks(options, endpoint, served.name, progress)
        if vllm.uses_ray(cluster):
            checks += _ray_checks(site, target)
        if options.restart:
            first = cluster.served()[0]
            checks.append(restart_check(
                target.conns[cluster.head], cluster.head, vllm.unit_name(cluster, first),
                target.endpoint(first.port), first.name, progress, VLLM_RESTART_WAIT_S,
            ))  # fmt: skip
        return Report(cluster.name, tuple(checks), streams)

    def recover(
        self,
        cluster: Cluster,
        back: Sequence[str],
        conns: Mapping[str, Connection],
        progress: Progress,
    ) -> list[base.Recovery]:
        """Nothing: a Ray worker's unit rejoins the head by itself once post-install ran
        again, and the head's servers wait for the placement they need."""
        return []


UNIT_GRACE_S = 20.0  # a unit that crashed once may come up at its next start (RestartSec=5)


def _stays_down(conn: Connection, unit: str, grace_s: float | None = None) -> bool:
    """Whether ``unit`` is still not active after a grace of a few restarts."""
    deadline = time.monotonic() + (UNIT_GRACE_S if grace_s is None else grace_s)
    while True:
        state = conn.run(f"systemctl is-active {shlex.quote(unit)}", timeout=30).stdout.strip()
        if state == "active":
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(2)


def _architectures(site: Site, cluster: Cluster) -> dict[str, tuple[str, ...]]:
    """Each served model's config.json architectures, from the model store."""

    store = ModelStore(site.models_dir)
    found: dict[str, tuple[str, ...]] = {}
    for served in cluster.served():
        try:
            found[served.model] = tuple(store.get(served.model).architectures)
        except ModelError:
            found[served.model] = ()
    return found


def _ray_checks(site: Site, target: SmokeTarget) -> list[Check]:
    """What Ray on the head says of every member (alive, with its CPUs and GPUs), asked
    with the ``ray`` of the venv post-install made from the cluster's wheelhouse."""

    cluster = target.cluster
    found = vllm_site.site_members(site.cfg, site.registry, cluster, site.profiles)
    venv = vllm_site.venv_for(site.cfg, cluster, found)
    address = f"{target.nodes[cluster.head].ip}:{vllm.RAY_PORTS['port']}"
    command = (
        f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={vllm.TOKEN_PATH} "
        f"{ray_nodes_command(venv + '/bin', address)}"
    )
    result = target.conns[cluster.head].run(command, timeout=120)
    addresses = {h: n.ip or "" for h, n in target.nodes.items()}
    return list(ray_checks(result.stdout + result.stderr, addresses, None))
