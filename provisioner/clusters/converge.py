"""Day two: a cluster member that comes back on its image is brought back to serving by
the control node itself, with no command typed.

A node's image is stateless: after a reboot (the rack powered off for the night, a crash,
a new image) it comes back bare. When it reports from its image, ``serve`` kicks
:class:`Converger`; once every member that rebooted with it is back (or
:data:`RETURN_TIMEOUT_S` passed), :func:`converge` runs, for the whole cluster:

1. the same post-install as ``postinstall run`` (its steps are idempotent: on the members
   that did not reboot every step is ``unchanged`` and nothing restarts; on the ones that
   did, the runtime, the model and the units come back);
2. the engine's recovery (:meth:`ClusterEngine.recover`): llama.cpp's RPC has none, so a
   head whose worker went away is restarted after every worker's RPC server is active
   again, never before;
3. the cluster's smoke, which moves every member to ``serving``, ``degraded`` or
   ``failed`` naming the check.

Each stage goes on every member's timeline as a ``converge`` event (``stage``, ``ok``,
``back``, ``seconds``, ``reason``). Convergence is on for every cluster; ``cluster pause``
turns it off for one (the spec's ``converge`` flag) and ``cluster resume`` back on.

Why re-run post-install rather than render the units at boot (Warewulf's runtime
overlays): the steps already know how to check, install and verify a node, and they
bring the model and the runtime with them; an overlay would be a second way of saying the
same thing, and the head's ``--rpc`` list would still need the workers to be back.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from provisioner.clusters.engines import engine_for
from provisioner.clusters.engines.base import Progress, SmokeOptions
from provisioner.clusters.plan import postinstall_plan
from provisioner.clusters.site import Site
from provisioner.clusters.smoke import floors_for, smoke
from provisioner.clusters.store import load_all, members
from provisioner.errors import ProvisionerError
from provisioner.postinstall import fanout
from provisioner.postinstall.plan import NodePlan
from provisioner.postinstall.ssh import Connection, SshError
from provisioner.records import Cluster, EventKind, Node
from provisioner.registry import Registry
from provisioner.smoke.verdict import verdict as smoke_verdict
from provisioner.states import NodeEvent, NodeState

log = logging.getLogger(__name__)

SETTLE_S = 15.0  # after a member's report, for the others that rebooted with it to report
QUIET_S = 2.0  # instead, when no member is on its way back (all that rebooted reported)
RETURN_TIMEOUT_S = 600.0  # a member still booting after this is left behind (degraded)
# At boot the smoke kills nothing (no restart check) and waits for the model to load.
BOOT_SMOKE = SmokeOptions(wait_s=600.0, restart=False)

Connect = Callable[[Node], Connection]


@dataclass(frozen=True)
class Convergence:
    """One convergence of one cluster: how far it got, and why it stopped."""

    cluster: str
    back: tuple[str, ...]  # the members that came back (hostnames)
    stage: str  # plan | post-install | recover | smoke: where it ended
    ok: bool
    seconds: float
    reason: str | None = None
    verdict: str | None = None  # the smoke's: serving | degraded | failed
    recovered: tuple[str, ...] = ()  # what the engine redid (e.g. the head restarted)
    without: tuple[str, ...] = ()  # workers left out (lost_worker=drop): not back

    def as_detail(self) -> dict[str, str | bool | float | None]:
        return {
            "without": ", ".join(self.without) or None,
            "cluster": self.cluster,
            "back": ", ".join(self.back),
            "stage": self.stage,
            "ok": self.ok,
            "seconds": round(self.seconds, 1),
            "reason": self.reason,
            "verdict": self.verdict,
            "recovered": "; ".join(self.recovered) or None,
        }


def booting(registry: Registry, node: Node) -> bool:
    """Asked for a boot script after its last report: on its way back, not back yet."""
    last_script = last_report = 0.0
    for event in registry.events(node.mac):
        if event.kind is EventKind.SCRIPT:
            last_script = event.ts
        elif event.kind is EventKind.INVENTORY:
            last_report = event.ts
    return last_script > last_report


LOST_WORKER_OPTION = "lost_worker"  # degrade (the default) | drop


SSH_PROBE_S = 5.0


def ssh_port_open(node: Node) -> bool:
    """Whether the node takes a TCP connection on port 22 within :data:`SSH_PROBE_S`
    (a powered-off node does not; one booting may not yet)."""
    if not node.ip:
        return False
    try:
        socket.create_connection((node.ip, 22), timeout=SSH_PROBE_S).close()
    except OSError:
        return False
    return True


def lost_workers(
    registry: Registry, cluster: Cluster, reachable: Callable[[Node], bool] = ssh_port_open
) -> tuple[str, ...]:
    """The workers not back: on their way (a boot script asked for since their last
    report) or not answering on SSH's port (powered off, gone)."""
    lost = []
    for node in members(registry, cluster):
        if node.hostname == cluster.head:
            continue
        if booting(registry, node) or not reachable(node):
            lost.append(node.hostname or node.mac)
    return tuple(lost)


def clusters_of(registry: Registry, node: Node) -> list[Cluster]:
    """The clusters ``node`` is a member of (by hostname)."""
    if node.hostname is None:
        return []
    return [c for c in load_all(registry) if node.hostname in c.members]


def converge(
    site: Site,
    cluster: Cluster,
    back: Collection[str],
    *,
    connect: Connect,
    progress: Progress,
    options: SmokeOptions = BOOT_SMOKE,
    clock: Callable[[], float] = time.monotonic,
    reachable: Callable[[Node], bool] = ssh_port_open,
) -> Convergence:
    """Post-install, the engine's recovery, then smoke (see the module's docstring).

    A cluster with the option ``lost_worker=drop`` goes on without the workers that are
    not back (:func:`lost_workers`): the head is set up and restarted with the others (or
    alone) and smoke judges that; a worker that returns later is taken back by the
    convergence its report starts. The default (``degrade``) waits for every member and
    leaves the head ``degraded`` naming the one missing."""
    started = clock()
    back_names = tuple(h for h in cluster.members if h in back)
    lost: tuple[str, ...] = ()
    whole = cluster
    if cluster.options.get(LOST_WORKER_OPTION, "degrade") == "drop":
        lost = lost_workers(site.registry, cluster, reachable)
        if lost:  # the head is restarted with the others (or alone), smoke judges that
            progress(f"{cluster.name}: without {', '.join(lost)} (not back; lost_worker=drop)")
            cluster = replace(cluster, workers=tuple(w for w in cluster.workers if w not in lost))

    def ended(
        stage: str,
        ok: bool,
        reason: str | None = None,
        *,
        verdict: str | None = None,
        recovered: tuple[str, ...] = (),
    ) -> Convergence:
        outcome = Convergence(
            cluster.name, back_names, stage, ok, clock() - started, reason, verdict, recovered,
            lost,
        )  # fmt: skip
        for node in members(site.registry, whole):
            site.registry.add_event(node.mac, EventKind.CONVERGE, outcome.as_detail())
        if not ok and verdict is None:  # it ended before the smoke's verdict
            _degrade_head(site.registry, cluster, f"converge {stage}: {reason}")
        log.log(
            logging.INFO if ok else logging.WARNING,
            "converge %s: %s %s%s", cluster.name, stage, "ok" if ok else "failed",
            f": {reason}" if reason else "",
        )  # fmt: skip
        return outcome

    try:
        plans = postinstall_plan(site, cluster, build=True, progress=progress)
    except ProvisionerError as exc:
        return ended("plan", False, str(exc))

    def open_for(plan: NodePlan) -> Connection:
        node = site.registry.node(plan.member.mac)
        assert node is not None
        return connect(node)

    runs = fanout.run(site.registry, plans, open_for, progress)
    failed = [f"{r.hostname}: {r.error}" for r in runs if not r.ok]
    if failed:
        return ended("post-install", False, "; ".join(failed))

    conns: dict[str, Connection] = {}
    try:
        nodes = {n.hostname or n.mac: n for n in members(site.registry, cluster)}
        for hostname, node in nodes.items():
            conns[hostname] = connect(node)
        recovered = []
        for step in engine_for(cluster).recover(cluster, back_names, conns, progress):
            # Its own event on the member's timeline, as it happens: the order is visible.
            site.registry.add_event(
                nodes[step.host].mac,
                EventKind.RECOVER,
                {"cluster": cluster.name, "what": step.what},
            )
            recovered.append(str(step))
    except (ProvisionerError, SshError) as exc:
        return ended("recover", False, str(exc))
    finally:
        for conn in conns.values():
            conn.close()

    try:
        report = smoke(site, cluster, options, floors_for(site, cluster), progress)
    except (ProvisionerError, SshError) as exc:
        return ended("smoke", False, str(exc), recovered=tuple(recovered))
    _, reason = smoke_verdict(report)
    head = site.registry.node(cluster.head)
    return ended(
        "smoke", report.passed, reason, verdict=head.state.value if head else None,
        recovered=tuple(recovered),
    )  # fmt: skip


def _degrade_head(registry: Registry, cluster: Cluster, reason: str) -> None:
    """A convergence that did not get to a smoke verdict: the head, if it said it serves,
    now says ``degraded`` with the reason (the cluster is not whole; the members that
    failed a step are ``failed`` already). The next convergence's smoke sets it right."""
    head = registry.node(cluster.head)
    if head is not None and head.state is NodeState.SERVING:
        registry.transition(head.mac, NodeEvent.SMOKE_DEGRADED, reason=reason)


Run = Callable[[str, tuple[str, ...]], object]


class Converger:
    """Debounces the reports of members coming back and runs one convergence per cluster
    at a time, in a thread of its own (``serve`` kicks it; :func:`converge` is ``run``)."""

    def __init__(
        self,
        registry: Registry,
        run: Run,
        *,
        settle_s: float = SETTLE_S,
        quiet_s: float = QUIET_S,
        timeout_s: float = RETURN_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.registry = registry
        self.run = run
        self.settle_s = settle_s
        self.quiet_s = quiet_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, float]] = {}  # cluster -> hostname -> first kick
        self._timers: dict[str, threading.Timer] = {}
        self._running: set[str] = set()
        self._closed = False

    def kick(self, node: Node) -> list[str]:
        """``node`` reported from its image: converge its clusters soon. The names.

        Soon is ``settle_s`` while another member is on its way back (it fetched a boot
        script and has not reported yet; :meth:`due` waits for it anyway), else
        ``quiet_s``: the members that rebooted together have all reported, and waiting
        longer only delays serving (15 of the 31 s from power-on to serving here)."""
        names = []
        for cluster in clusters_of(self.registry, node):
            if not cluster.converge:
                log.info("converge %s: paused, %s left as it is", cluster.name, node.hostname)
                continue
            with self._lock:
                pending = self._pending.setdefault(cluster.name, {})
                pending.setdefault(node.hostname or node.mac, self.clock())
            try:
                others = [m for m in members(self.registry, cluster) if m.mac != node.mac]
                waiting = any(booting(self.registry, m) for m in others)
            except ProvisionerError:  # a member gone from the registry: due() will say
                waiting = True
            self._arm(cluster.name, self.settle_s if waiting else self.quiet_s)
            names.append(cluster.name)
        return names

    def request(self, name: str, hosts: Collection[str]) -> None:
        """Converge cluster ``name`` now for ``hosts`` (the watchdog found them down)."""
        with self._lock:
            pending = self._pending.setdefault(name, {})
            for host in hosts:
                pending.setdefault(host, self.clock())
        self._arm(name, 0.0)

    def busy(self, name: str) -> bool:
        """A convergence of ``name`` is waiting or running."""
        with self._lock:
            return name in self._running or bool(self._pending.get(name))

    def _arm(self, name: str, delay: float) -> None:
        with self._lock:
            if self._closed:
                return
            old = self._timers.pop(name, None)
            if old is not None:
                old.cancel()
            timer = threading.Timer(delay, self._fire, args=(name,))
            timer.daemon = True
            self._timers[name] = timer
            timer.start()

    def due(self, name: str) -> tuple[str, ...] | None:
        """The members to converge for if the cluster may go now; None: wait (a member
        is still on its way back, or a convergence of it is running)."""
        try:
            cluster = next(c for c in load_all(self.registry) if c.name == name)
        except StopIteration:
            cluster = None
        if cluster is None or not cluster.converge:
            # Gone, or paused since it was asked for (the watchdog's round may have read
            # the cluster before `cluster pause`): what was pending is dropped.
            with self._lock:
                self._pending.pop(name, None)
            if cluster is not None:
                log.info("converge %s: paused, nothing done", name)
            return None
        with self._lock:
            if name in self._running:
                return None
            pending = dict(self._pending.get(name, {}))
        if not pending:
            return None
        waited = self.clock() - min(pending.values())
        still = [n.hostname for n in members(self.registry, cluster) if booting(self.registry, n)]
        if still and waited < self.timeout_s:
            log.info("converge %s: waiting for %s to come back", name, ", ".join(map(str, still)))
            return None
        with self._lock:
            self._pending.pop(name, None)
            self._running.add(name)
        return tuple(pending)

    def _fire(self, name: str) -> None:
        back = self.due(name)
        if back is None:
            with self._lock:
                again = name in self._pending and not self._closed
            if again:
                self._arm(name, self.settle_s)
            return
        try:
            self.run(name, back)
        except Exception:  # a convergence's failure must not end serve's thread
            log.exception("converge %s failed", name)
        finally:
            with self._lock:
                self._running.discard(name)
                again = name in self._pending and not self._closed
            if again:  # members came back while it ran
                self._arm(name, self.settle_s)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            timers = list(self._timers.values())
            self._timers.clear()
        for timer in timers:
            timer.cancel()


def site_runner(site: Site, connect: Connect, progress: Progress) -> Run:
    """``Converger``'s ``run`` for ``serve``: load the cluster, converge it."""

    def run(name: str, back: tuple[str, ...]) -> Convergence:
        cluster = next(c for c in load_all(site.registry) if c.name == name)
        return converge(site, cluster, back, connect=connect, progress=progress)

    return run


def last_convergence(registry: Registry, cluster: Cluster) -> dict[str, object] | None:
    """The last ``converge`` event of the cluster's head, with its time (``ts``)."""
    head = registry.node(cluster.head)
    if head is None:
        return None
    found = [e for e in registry.events(head.mac) if e.kind is EventKind.CONVERGE]
    return {**found[-1].detail, "ts": found[-1].ts} if found else None
