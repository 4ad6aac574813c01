"""llama.cpp over RPC: a head running ``llama-server --rpc`` to every worker's RPC server.

The runtime is a llama.cpp build from the artifact store, the model a GGUF file from the
model store; both are fetched by the nodes with their sha256 (``postinstall/llama-rpc.yaml``).
Smoke proves every worker is used: traffic on its RPC port during a completion and its
buffer in the head's log.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from provisioner.artifacts import cuda_driver, toolchain
from provisioner.artifacts.llama import DEFAULT_CPU_BASELINE, Backend, BuildSpec
from provisioner.artifacts.store import ArtifactStore, Manifest
from provisioner.clusters import keys
from provisioner.clusters.engines import base, llama_builds, vllm_site
from provisioner.clusters.engines.artifacts import ArtifactNeed
from provisioner.clusters.engines.base import Progress, Recovery, SmokeOptions, SmokeTarget
from provisioner.clusters.engines.llama_builds import MemberBuild, member_build
from provisioner.clusters.site import Site
from provisioner.clusters.spec import ClusterError
from provisioner.clusters.store import members
from provisioner.models.store import ModelStore
from provisioner.postinstall.plan import Download, Member, NodePlan, plan
from provisioner.postinstall.ssh import Connection
from provisioner.profiles import Engine
from provisioner.records import Cluster, Served
from provisioner.smoke import devices
from provisioner.smoke.cluster import head_log, restart_check, sampler, unit_checks
from provisioner.smoke.report import Check, Report
from provisioner.smoke.run import Worker, run_smoke

HEAD_UNIT = "llama-server.service"
WORKER_UNIT = "llama-rpc.service"
BUILD_COMMAND = "provisioner artifact build llama.cpp"
# The RPC server's output since boot (its devices are printed at each start).
RPC_LOG = f"journalctl -u {WORKER_UNIT} -b -o cat --no-pager -n 2000"


class LlamaRpcEngine:
    kind = Engine.LLAMA_RPC

    def complete(self, cluster: Cluster) -> Cluster:
        """``--serve NAME=MODEL``: one name the head's llama-server answers to (its alias),
        on the cluster's HTTP port; two clusters that serve one name are two replicas of
        it behind the gateway."""
        if not cluster.serve:
            return cluster
        if len(cluster.serve) > 1:
            raise ClusterError("llama-rpc serves one model: give one --serve NAME=MODEL")
        served = cluster.serve[0]
        if served.share is not None:
            raise ClusterError(f"--serve {served.name}: a memory share is for --engine vllm")
        if cluster.model != served.model:
            raise ClusterError(f"--serve {served.name}={served.model} and --model "
                               f"{cluster.model}: give one model")  # fmt: skip
        return replace(cluster, serve=(Served(served.name, served.model, None, cluster.http_port),))

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
        """Refused: a member whose profile's backend has no build in the store and whose
        toolchain this control node lacks (its GPUs would sit idle)."""
        try:
            builds = member_builds(site, cluster)
        except ClusterError as exc:
            return [str(exc)], []
        store = ArtifactStore(site.artifacts_dir)
        problems = driver_problems(site, cluster, builds, store)
        if cluster.options.get("artifact"):
            return problems, []
        for spec in dict.fromkeys(b.spec for b in builds.values()):
            have = llama_builds.newest(store, spec)
            why = None if have else toolchain.missing(spec.backend, spec.gpu_arch)
            if why is None:
                continue
            hosts = [h for h, b in builds.items() if b.spec == spec]
            profile = builds[hosts[0]].profile
            problems.append(
                f"{', '.join(hosts)} (profile {profile}): llama.cpp's {spec.backend.value} "
                f"backend cannot be built on this control node: {why}. Build it where it "
                f"can ({build_command(spec)}) and put it in {store.root}, or name a build "
                "with --option artifact=NAME"
            )
        return problems, []

    def recipes(self, cluster: Cluster) -> tuple[str, ...]:
        return ("llama-rpc",)

    def needs(self, site: Site, cluster: Cluster) -> list[ArtifactNeed]:
        """One build per distinct spec among the members' profiles (none with
        ``--option artifact``)."""
        if cluster.options.get("artifact"):
            return []
        store = ArtifactStore(site.artifacts_dir)
        specs = {b.spec: b for b in member_builds(site, cluster).values()}
        return [
            ArtifactNeed(
                b.describe(), build_command(spec), spec, llama_builds.newest(store, spec),
                missing(store, spec),
            )
            for spec, b in specs.items()
        ]  # fmt: skip

    def plan(self, site: Site, cluster: Cluster, members: Sequence[Member]) -> list[NodePlan]:
        builds = member_builds(site, cluster)
        refused = driver_problems(site, cluster, builds, ArtifactStore(site.artifacts_dir))
        if refused:  # the driver changed since create (an image switched): no node touched
            raise ClusterError("; ".join(refused))
        downloads = runtimes(site, cluster, builds)
        extra = {
            m.hostname: {
                "firewall": {
                    "control_only": [cluster.http_port] if m.hostname == cluster.head else [],
                    "head_only": [] if m.hostname == cluster.head else [cluster.rpc_port],
                },
                "accel": {
                    "backend": builds[m.hostname].spec.backend.value,
                    "env": dict(builds[m.hostname].env),
                },
            }
            for m in members
        }
        return plan(
            cluster,
            members,
            control_url=site.cfg.http_base,
            artifact=None,
            artifacts=downloads,
            model=model_download(site, cluster),
            engine_recipes=self.recipes(cluster),
            extra=extra,
            engine_key=keys.secret(site.cfg.state_dir, cluster.name, "engine"),
            gateways=site.cfg.gateway.hosts,
            exporter_port=site.cfg.prometheus.node_exporter_port,
            scrapers=site.cfg.prometheus.hosts,
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
        name = cluster.served()[0].name  # what llama-server answers to (--alias)
        progress(f"smoke {cluster.name}: {endpoint}, model {name}")
        workers = [
            Worker(f"{nodes[w].ip}:{cluster.rpc_port}", sampler(conns[w])) for w in cluster.workers
        ]
        units = unit_checks(conns, base.units_by_host(self, cluster))
        base.wait_healthy(endpoint, options.wait_s, cluster.name, progress)
        log = head_log(conns[cluster.head])
        report = run_smoke(cluster.name, endpoint, name, target.floors, log, workers)
        report = report.with_checks(units)
        report = report.with_checks(accelerator_checks(site, cluster, conns, log))
        report = report.with_checks(base.load_checks(options, endpoint, name, progress))
        if options.restart:  # a worker's RPC server, or a lone head's server
            host = cluster.workers[0] if cluster.workers else cluster.head
            unit = WORKER_UNIT if cluster.workers else HEAD_UNIT
            report = report.with_checks(
                [restart_check(conns[host], host, unit, endpoint, name, progress)]
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


def accelerator_checks(
    site: Site, cluster: Cluster, conns: Mapping[str, Connection], log: str
) -> list[Check]:
    """Did each member's accelerator do the work? Its profile's backend against the
    devices the head's log and each worker's RPC server name (smoke/devices.py)."""
    builds = member_builds(site, cluster)
    backend = {host: b.spec.backend.value for host, b in builds.items()}
    checks = devices.head_checks(cluster.head, backend.get(cluster.head, "cpu"), log)
    gpu_workers = [w for w in cluster.workers if backend.get(w, "cpu") != "cpu"]
    logs = {w: conns[w].run(RPC_LOG, timeout=60).stdout for w in gpu_workers}
    return checks + devices.worker_checks({w: backend[w] for w in gpu_workers}, logs)


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


def driver_problems(
    site: Site, cluster: Cluster, builds: Mapping[str, MemberBuild], store: ArtifactStore
) -> list[str]:
    """CUDA members whose NVIDIA driver (their image's, else what post-install's driver
    step pins) is older than the CUDA their build is made with needs: the store's build
    (or ``--option artifact``'s), else the one this control node would make now."""
    cuda_hosts = {h for h, b in builds.items() if b.spec.backend is Backend.CUDA}
    if not cuda_hosts:
        return []
    named = cluster.options.get("artifact")
    problems = []
    for m in vllm_site.site_members(site.cfg, site.registry, cluster, site.profiles):
        if m.hostname not in cuda_hosts or not m.driver:
            continue
        spec = builds[m.hostname].spec
        have = store.get(named) if named else llama_builds.newest(store, spec)
        release = have.inputs.get("cuda_version") if have else toolchain.cuda_release()
        made = f"the llama.cpp build that {build_command(spec)} makes"
        what = f"llama.cpp {have.name}" if have else made
        said = cuda_driver.problem(
            m.hostname, release or "unknown", "", m.driver, m.driver_source, what=what,
            remedy="build llama.cpp with an older CUDA toolkit installed on this control node",
        )  # fmt: skip
        if said:
            problems.append(said)
    return problems


def member_builds(site: Site, cluster: Cluster) -> dict[str, MemberBuild]:
    """Each member's build (hostname -> MemberBuild), from its profile."""
    return {
        node.hostname or node.mac: member_build(site.profiles.get(node.profile or ""))
        for node in members(site.registry, cluster)
    }


def build_command(spec: BuildSpec) -> str:
    parts = [BUILD_COMMAND]
    if spec.backend is not Backend.CPU:
        parts.append(f"--backend {spec.backend.value}")
    if spec.gpu_arch:
        parts.append(f"--gpu-arch {spec.gpu_arch}")
    if spec.cpu_baseline != DEFAULT_CPU_BASELINE:
        parts.append(f"--cpu-baseline {spec.cpu_baseline}")
    return " ".join(parts)


def runtimes(
    site: Site, cluster: Cluster, builds: Mapping[str, MemberBuild]
) -> dict[str, Download]:
    """The artifact each member fetches: ``--option artifact``'s, else the newest build
    of its profile's spec (ClusterError naming the command that builds a missing one)."""
    store = ArtifactStore(site.artifacts_dir)
    name = cluster.options.get("artifact")
    named = store.get(name) if name else None  # one build for every member
    by_spec: dict[BuildSpec, Manifest] = {}
    found = {}
    for host, build in builds.items():
        if build.spec not in by_spec:
            newest = named or llama_builds.newest(store, build.spec)
            if newest is None:
                raise ClusterError(missing(store, build.spec))
            by_spec[build.spec] = newest
        manifest = by_spec[build.spec]
        found[host] = download_of(site, manifest)
    return found


def download_of(site: Site, manifest: Manifest) -> Download:
    return Download(
        manifest.name,
        manifest.file,
        f"{site.cfg.http_base}/artifacts/{manifest.file}",
        manifest.sha256,
        manifest.size,
        binaries=dict(manifest.binaries),
        packages=tuple(manifest.inputs.get("runtime_packages", "").split()),
    )


def missing(store: ArtifactStore, spec: BuildSpec | None = None) -> str:
    spec = spec or BuildSpec()
    what = f"{spec.backend.value}, {spec.target()}"
    return f"no llama.cpp build ({what}) in {store.root}: {build_command(spec)}"


def model_download(site: Site, cluster: Cluster) -> Download:

    model = ModelStore(site.models_dir).get(cluster.model)
    base = site.cfg.http_base
    return Download(model.name, model.file, f"{base}/models/{model.file}", model.sha256, model.size)
