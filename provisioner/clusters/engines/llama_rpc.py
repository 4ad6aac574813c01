"""llama.cpp over RPC: a head running ``llama-server --rpc`` to every worker's RPC server.

The runtime is a llama.cpp build from the artifact store, the model a GGUF file from the
model store; both are fetched by the nodes with their sha256 (``postinstall/llama-rpc.yaml``).
Smoke proves every worker is used: traffic on its RPC port during a completion and its
buffer in the head's log.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from provisioner.artifacts.llama import BuildSpec
from provisioner.artifacts.store import ArtifactStore, Manifest
from provisioner.clusters import keys
from provisioner.clusters.engines import base
from provisioner.clusters.engines.artifacts import ArtifactNeed
from provisioner.clusters.engines.base import Progress, Recovery, SmokeOptions, SmokeTarget
from provisioner.clusters.site import Site
from provisioner.clusters.spec import ClusterError
from provisioner.models.store import ModelStore
from provisioner.postinstall.plan import Download, Member, NodePlan, plan
from provisioner.postinstall.ssh import Connection
from provisioner.profiles import Engine
from provisioner.records import Cluster
from provisioner.smoke.cluster import head_log, restart_check, sampler, unit_checks
from provisioner.smoke.report import Report
from provisioner.smoke.run import Worker, run_smoke

ARTIFACT_PREFIX = "llama.cpp-"
HEAD_UNIT = "llama-server.service"
WORKER_UNIT = "llama-rpc.service"
BUILD_COMMAND = "provisioner artifact build llama.cpp"


class LlamaRpcEngine:
    kind = Engine.LLAMA_RPC

    def complete(self, cluster: Cluster) -> Cluster:
        if cluster.serve:
            raise ClusterError("--serve is for --engine vllm (llama-rpc serves --model)")
        return cluster

    def check_models(self, cluster: Cluster, model_kinds: Mapping[str, str | None]) -> list[str]:
        if cluster.model not in model_kinds:
            return []
        kind = model_kinds[cluster.model]
        if kind is None:
            return [f"model: no model {cluster.model!r} in the store "
                    f"(provisioner model add FILE --name {cluster.model})"]  # fmt: skip
        if kind != "gguf":
            return [f"model {cluster.model!r} is not a GGUF file: llama.cpp needs one"]
        return []

    def check(
        self, site: Site, cluster: Cluster, model_kinds: Mapping[str, str | None]
    ) -> tuple[list[str], list[str]]:
        return [], []

    def recipes(self, cluster: Cluster) -> tuple[str, ...]:
        return ("llama-rpc",)

    def needs(self, site: Site, cluster: Cluster) -> list[ArtifactNeed]:
        if cluster.options.get("artifact"):
            return []
        store = ArtifactStore(site.artifacts_dir)
        spec = BuildSpec()  # what `artifact build llama.cpp` builds: the runtime() it takes
        return [ArtifactNeed(
            f"llama.cpp ({spec.backend.value}, {spec.target()})", BUILD_COMMAND, spec,
            newest_cpu_build(store), missing(store),
        )]  # fmt: skip

    def plan(self, site: Site, cluster: Cluster, members: Sequence[Member]) -> list[NodePlan]:
        firewall = {
            m.hostname: {"firewall": {
                "control_only": [cluster.http_port] if m.hostname == cluster.head else [],
                "head_only": [] if m.hostname == cluster.head else [cluster.rpc_port],
            }}
            for m in members
        }  # fmt: skip
        return plan(
            cluster,
            members,
            control_url=site.cfg.http_base,
            artifact=runtime(site, cluster),
            model=model_download(site, cluster),
            engine_recipes=self.recipes(cluster),
            extra=firewall,
            engine_key=keys.secret(site.cfg.state_dir, cluster.name, "engine"),
        )

    def teardown_context(self, cluster: Cluster) -> dict[str, Any]:
        return {}

    def forget(self, site: Site, cluster: Cluster) -> None:
        return None

    def dry_run(
        self, site: Site, cluster: Cluster, *, check_args: bool, progress: Progress
    ) -> tuple[bool, list[str]]:
        return True, []

    def smoke(
        self, site: Site, target: SmokeTarget, options: SmokeOptions, progress: Progress
    ) -> Report:
        """Health, a streamed completion (TTFT, tokens/s), every worker used (traffic on
        its RPC port, its buffer in the head's log), every unit, a restart."""

        cluster, nodes, conns = target.cluster, target.nodes, target.conns
        endpoint = target.endpoint(cluster.http_port)
        progress(f"smoke {cluster.name}: {endpoint}, model {cluster.model}")
        workers = [
            Worker(f"{nodes[w].ip}:{cluster.rpc_port}", sampler(conns[w])) for w in cluster.workers
        ]
        units = unit_checks(conns, base.units_by_host(self, cluster))
        base.wait_healthy(endpoint, options.wait_s, cluster.name, progress)
        report = run_smoke(
            cluster.name, endpoint, cluster.model, target.floors,
            head_log(conns[cluster.head]), workers,
        )  # fmt: skip
        report = report.with_checks(units)
        report = report.with_checks(base.load_checks(options, endpoint, cluster.model, progress))
        if options.restart:  # a worker's RPC server, or a lone head's server
            host = cluster.workers[0] if cluster.workers else cluster.head
            unit = WORKER_UNIT if cluster.workers else HEAD_UNIT
            report = report.with_checks(
                [restart_check(conns[host], host, unit, endpoint, cluster.model, progress)]
            )
        return report

    def recover(
        self,
        cluster: Cluster,
        back: Sequence[str],
        conns: Mapping[str, Connection],
        progress: Progress,
    ) -> list[Recovery]:
        """llama.cpp's RPC has no recovery: a head that lost a worker keeps failing (and a
        head that came back with its workers may have started before them). So when a
        worker came back, the head is restarted after every worker's RPC server is
        active again, never before; reset-failed first, in case systemd gave up on it.

        A head that came back while its workers stayed up finds them busy: an RPC server
        serves one head at a time, and the connection of a head that was reset (power,
        crash: no FIN) is never closed, so it would wait for that dead head forever. Those
        workers' RPC servers are restarted first, then the head."""
        if not cluster.workers:
            return []
        workers_back = [w for w in cluster.workers if w in back]
        head_back = cluster.head in back
        if not workers_back and not head_back:
            return []
        stayed_up = [w for w in cluster.workers if head_back and w not in workers_back]
        done = []
        for worker in stayed_up:
            restart_unit(conns[worker], worker, WORKER_UNIT)
            done.append(
                Recovery(worker, f"{WORKER_UNIT} restarted (it held the connection of "
                                 f"{cluster.head} before its reboot)")
            )  # fmt: skip
            progress(str(done[-1]))
        for worker in cluster.workers:
            wait_active(conns[worker], worker, WORKER_UNIT, progress)
            done.append(Recovery(worker, f"{WORKER_UNIT} active"))
        restart_unit(conns[cluster.head], cluster.head, HEAD_UNIT)
        why = (
            f"after {', '.join(workers_back)} came back"
            if workers_back
            else "after its workers' RPC servers were restarted"
        )
        head = Recovery(cluster.head, f"{HEAD_UNIT} restarted {why}")
        progress(str(head))
        return [*done, head]


def restart_unit(conn: Connection, hostname: str, unit: str) -> None:
    """reset-failed (in case systemd gave up on it), then restart; ClusterError if not."""
    restarted = conn.run(
        f"systemctl reset-failed {unit} 2>/dev/null; systemctl restart {unit}", timeout=120
    )
    if restarted.exit_status != 0:
        raise ClusterError(
            f"{hostname}: systemctl restart {unit} failed: {restarted.stderr[-300:]}"
        )


def wait_active(
    conn: Connection, hostname: str, unit: str, progress: Progress, wait_s: float = 120.0
) -> None:
    """Until ``unit`` is active on ``hostname`` (ClusterError after ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    while True:
        state = conn.run(f"systemctl is-active {unit}", timeout=30).stdout.strip()
        if state == "active":
            progress(f"{hostname}: {unit} active")
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"{hostname}: {unit} not active after {wait_s:.0f} s ({state})")
        time.sleep(1)


def runtime(site: Site, cluster: Cluster) -> Download:
    """The llama.cpp artifact the cluster runs: its own, else the newest CPU build."""

    store = ArtifactStore(site.artifacts_dir)
    name = cluster.options.get("artifact")
    if name:
        manifest = store.get(name)
    else:
        newest = newest_cpu_build(store)
        if newest is None:
            raise ClusterError(missing(store))
        manifest = newest
    return Download(
        manifest.name,
        manifest.file,
        f"{site.cfg.http_base}/artifacts/{manifest.file}",
        manifest.sha256,
        manifest.size,
        binaries=dict(manifest.binaries),
    )


def newest_cpu_build(store: ArtifactStore) -> Manifest | None:
    """The newest llama.cpp CPU build in the store, if any."""
    found = [m for m in store.list() if m.name.startswith(ARTIFACT_PREFIX) and "-cpu-" in m.name]
    return max(found, key=lambda m: m.built_at) if found else None


def missing(store: ArtifactStore) -> str:
    return f"no llama.cpp build in {store.root}: {BUILD_COMMAND}"


def model_download(site: Site, cluster: Cluster) -> Download:

    model = ModelStore(site.models_dir).get(cluster.model)
    base = site.cfg.http_base
    return Download(model.name, model.file, f"{base}/models/{model.file}", model.sha256, model.size)
