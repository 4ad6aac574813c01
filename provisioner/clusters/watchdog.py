"""The watchdog: a cluster whose nodes stay up but whose engine stopped is brought back.

Convergence at boot (:mod:`provisioner.clusters.converge`) covers a member that reboots:
its image reports, ``serve`` hears it. A unit that dies and stays dead tells nobody: a
worker's RPC server stopped (by hand, by the OOM killer, by systemd giving up after its
restarts) takes a llama.cpp head down with it at its next request, and no boot ever says
so. So every :data:`WATCH_INTERVAL_S` (``[cluster] watch_interval``) the watchdog asks each
member of each watched cluster, over SSH, whether the units its engine's recipes install
are active (``systemctl is-active``, the same list smoke checks). A member with a unit
still down when asked again :data:`CONFIRM_S` later (longer than systemd's
``RestartSec``), or one that did not answer two rounds in a row, goes on its timeline (a
``watch`` event) and the cluster is converged for it through the
:class:`~provisioner.clusters.converge.Converger`
(one convergence per cluster at a time, shared with the boots): post-install starts the
unit again (its step's check is ``is-active``), the engine's recovery restarts the head
after its workers, then smoke.

Watched: clusters that are not paused whose head serves (``serving`` or ``degraded``),
or whose last convergence failed (to retry it). A cluster never smoke-tested, or one a
person is working on (``cluster pause``), is left alone, as is one with a member on its
way back from a reboot (the boot's convergence handles it). A cluster found down again
right after a convergence is probed less often: the interval doubles each time, up to
:data:`MAX_BACKOFF_S`, so a member dead for good is not hammered; a healthy probe resets it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from provisioner.clusters.converge import Converger, booting, last_convergence
from provisioner.clusters.engines import engine_for
from provisioner.clusters.engines.base import units_by_host
from provisioner.clusters.store import load_all, members
from provisioner.errors import ProvisionerError
from provisioner.postinstall.ssh import Connection, SshError
from provisioner.records import Cluster, EventKind, Node
from provisioner.registry import Registry
from provisioner.states import NodeState

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 30.0
MAX_BACKOFF_S = 600.0
PROBE_TIMEOUT_S = 30
CONFIRM_S = 5.0  # a unit found down is asked again after this before anything is done

Connect = Callable[[Node], Connection]


@dataclass(frozen=True)
class Down:
    """One member found not serving its part: which units, or why it could not be asked."""

    host: str
    units: tuple[str, ...] = ()  # "unit: state"
    unreachable: str | None = None

    def __str__(self) -> str:
        why = self.unreachable or ", ".join(self.units)
        return f"{self.host}: {why}"


def is_active_command(units: tuple[str, ...]) -> str:
    """One line that prints each unit's state, one per line, in order (exit ignored)."""
    return "systemctl is-active " + " ".join(units) + "; true"


def judge(host: str, units: tuple[str, ...], output: str) -> Down | None:
    """``systemctl is-active`` output for ``units`` on ``host``: a :class:`Down` naming the
    units not ``active``, or None. ``activating`` counts as down: a unit in a restart loop
    (``Restart=always`` on a server that cannot start) shows it most of the time."""
    states = output.split()
    if len(states) != len(units):
        return Down(host, unreachable=f"unexpected answer to is-active: {output.strip()!r}")
    bad = tuple(f"{u}: {s}" for u, s in zip(units, states, strict=True) if s != "active")
    return Down(host, units=bad) if bad else None


def probe(
    cluster: Cluster,
    nodes: Mapping[str, Node],
    connect: Connect,
    only: Collection[str] | None = None,
) -> list[Down]:
    """Ask every member (or those in ``only``) whether its units are active; the ones
    that are not (or do not answer). ``nodes``: the members by hostname."""
    found = []
    for host, units in units_by_host(engine_for(cluster), cluster).items():
        if not units or (only is not None and host not in only):
            continue
        node = nodes.get(host)
        if node is None:
            found.append(Down(host, unreachable="not in the registry"))
            continue
        try:
            with connect(node) as conn:
                answer = conn.run(is_active_command(units), timeout=PROBE_TIMEOUT_S)
        except (SshError, ProvisionerError) as exc:
            found.append(Down(host, unreachable=f"no answer over SSH: {exc}"))
            continue
        down = judge(host, units, answer.stdout)
        if down is not None:
            found.append(down)
    return found


def watched(registry: Registry, cluster: Cluster, nodes: Mapping[str, Node]) -> bool:
    """Whether the watchdog looks at ``cluster`` now (see the module's docstring)."""
    if not cluster.converge:
        return False
    if any(booting(registry, n) for n in nodes.values()):
        return False
    head = nodes.get(cluster.head)
    if head is None:
        return False
    if head.state in (NodeState.SERVING, NodeState.DEGRADED):
        return True
    last = last_convergence(registry, cluster)
    return last is not None and not last.get("ok")


class Watchdog:
    """Probes the watched clusters every ``interval`` s in a thread of its own and asks
    ``converger`` to converge the ones found down (``serve`` starts it; ``tick`` is one
    round, for tests)."""

    def __init__(
        self,
        registry: Registry,
        converger: Converger,
        connect: Connect,
        *,
        interval: float = WATCH_INTERVAL_S,
        max_backoff: float = MAX_BACKOFF_S,
        confirm_s: float = CONFIRM_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.registry = registry
        self.converger = converger
        self.connect = connect
        self.interval = interval
        self.max_backoff = max_backoff
        self.confirm_s = confirm_s
        self.clock = clock
        self._strikes: dict[str, int] = {}  # cluster -> rounds in a row found down
        self._next: dict[str, float] = {}  # cluster -> when to probe it again
        self._silent: dict[str, set[str]] = {}  # cluster -> members that did not answer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> dict[str, list[Down]]:
        """One round: every watched cluster that is due probed; the ones found down, and
        what was down, after asking the converger to bring them back."""
        now = self.clock()
        found: dict[str, list[Down]] = {}
        for cluster in load_all(self.registry):
            if self._stop.is_set():
                break
            if now < self._next.get(cluster.name, 0.0) or self.converger.busy(cluster.name):
                continue
            nodes = {n.hostname or n.mac: n for n in members(self.registry, cluster)}
            if not watched(self.registry, cluster, nodes):
                self._strikes.pop(cluster.name, None)
                self._silent.pop(cluster.name, None)
                continue
            down = self._confirmed(cluster, nodes, probe(cluster, nodes, self.connect))
            strikes = self._strikes[cluster.name] = self._strikes.get(cluster.name, 0) + 1
            if not down:
                self._strikes.pop(cluster.name, None)
                self._next[cluster.name] = now + self.interval
                continue
            backoff = self.interval * 2 ** (strikes - 1)
            self._next[cluster.name] = now + min(self.max_backoff, backoff)
            found[cluster.name] = down
            for one in down:
                node = nodes.get(one.host)
                if node is not None:
                    detail = {"cluster": cluster.name, "units": ", ".join(one.units) or None,
                              "unreachable": one.unreachable}  # fmt: skip
                    self.registry.add_event(node.mac, EventKind.WATCH, detail)
            log.warning("watchdog: %s: %s: converging", cluster.name, "; ".join(map(str, down)))
            self.converger.request(cluster.name, [d.host for d in down])
        return found

    def _confirmed(
        self, cluster: Cluster, nodes: Mapping[str, Node], down: list[Down]
    ) -> list[Down]:
        """What is down for sure: a unit still down after ``confirm_s`` (what systemd's
        ``RestartSec`` hides, or a smoke's restart check), a member that did not answer
        this round and the one before (it may have been power-cycled a moment ago and
        not yet asked for its boot script)."""
        silent = {d.host for d in down if d.unreachable}
        before = self._silent.get(cluster.name, set())
        self._silent[cluster.name] = silent
        still = [d for d in down if not d.unreachable]
        if still and self.confirm_s > 0:  # asked again: only the members found down
            self._stop.wait(self.confirm_s)
            still = probe(cluster, nodes, self.connect, only={d.host for d in still})
        return still + [d for d in down if d.unreachable and d.host in before]

    def start(self) -> None:
        if self.interval <= 0:
            log.info("watchdog off ([cluster] watch_interval = 0)")
            return
        self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(min(self.interval, 5.0)):
            try:
                self.tick()
            except Exception:  # a round's failure must not end the watch
                log.exception("watchdog round failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)  # a daemon: a probe mid-SSH does not hold serve
