"""The seam between the cluster operations and an inference engine.

An engine (llama.cpp RPC, vLLM) is one module under ``clusters/engines/`` with one class
that satisfies :class:`ClusterEngine`; every engine-specific decision is a method here,
so no other module compares engine names. The recipes it names live in ``postinstall/``
(steps, and under ``teardown:`` the units and clean-up a removed cluster leaves behind).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from provisioner.clusters.engines.artifacts import ArtifactNeed
from provisioner.clusters.site import Site
from provisioner.postinstall.plan import Member, NodePlan, Teardown, teardown
from provisioner.postinstall.ssh import Connection
from provisioner.profiles import Engine
from provisioner.records import Cluster, Node
from provisioner.smoke.client import Endpoint, SmokeHttpError
from provisioner.smoke.client import wait_healthy as wait
from provisioner.smoke.load import load_checks as run_load_checks
from provisioner.smoke.report import Report
from provisioner.smoke.run import Floors

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Recovery:
    """One thing an engine's recovery did or waited for on one member (a timeline event)."""

    host: str
    what: str

    def __str__(self) -> str:
        return f"{self.host}: {self.what}"


@dataclass(frozen=True)
class SmokeOptions:
    """What the operator asked of one smoke run (``provisioner smoke``'s flags)."""

    wait_s: float = 300.0  # for the head (or each server) to load its model
    restart: bool = True  # kill a server and see systemd bring it back
    requests: int = 0  # a load check too: N completions per served model
    concurrency: int = 4
    min_rpm: float | None = None
    max_p99_s: float | None = None


@dataclass(frozen=True)
class SmokeTarget:
    """One cluster as smoke reaches it: its nodes by hostname, an open SSH connection to
    each, the floors the head's profile sets."""

    cluster: Cluster
    nodes: Mapping[str, Node]
    conns: Mapping[str, Connection]
    floors: Floors
    api_key: str | None = None  # the cluster's engine key (its servers require it)

    def endpoint(self, port: int) -> Endpoint:
        return Endpoint(f"http://{self.nodes[self.cluster.head].ip}:{port}", self.api_key)


class ClusterEngine(Protocol):
    """What the cluster operations ask of an engine."""

    kind: Engine

    def complete(self, cluster: Cluster) -> Cluster:
        """The spec as the command line gave it, with the engine's defaults filled in
        (raises ClusterError for what the engine does not take)."""
        ...

    def check_models(self, cluster: Cluster, model_kinds: Mapping[str, str | None]) -> list[str]:
        """At ``cluster create``, always: what refuses the models it would serve.
        ``model_kinds``: each model's kind in the store (``gguf``, ``hf``), None if missing."""
        ...

    def check(
        self, site: Site, cluster: Cluster, model_kinds: Mapping[str, str | None]
    ) -> tuple[list[str], list[str]]:
        """At ``cluster create``, once the members are fine: (problems that refuse the
        cluster, warnings)."""
        ...

    def recipes(self, cluster: Cluster) -> tuple[str, ...]:
        """The recipes in ``postinstall/`` it adds after base and the drivers, in order."""
        ...

    def needs(self, site: Site, cluster: Cluster) -> list[ArtifactNeed]:
        """What :meth:`plan` reads from the artifact store, each with the spec that builds
        it (``postinstall run`` builds the missing ones first); none for an artifact the
        cluster names itself (``--artifact``): that one is never built."""
        ...

    def plan(self, site: Site, cluster: Cluster, members: Sequence[Member]) -> list[NodePlan]:
        """Each member's post-install steps (the artifact, the model, its units)."""
        ...

    def teardown_context(self, cluster: Cluster) -> dict[str, Any]:
        """The context its recipes' ``teardown:`` entries render with (no stores needed)."""
        ...

    def forget(self, site: Site, cluster: Cluster) -> None:
        """What the control node keeps for the cluster, removed with it."""
        ...

    def dry_run(
        self, site: Site, cluster: Cluster, *, check_args: bool, progress: Progress
    ) -> tuple[bool, list[str]]:
        """``postinstall run --dry-run``: (accepted, lines to show: warnings, verdicts)."""
        ...

    def smoke(
        self, site: Site, target: SmokeTarget, options: SmokeOptions, progress: Progress
    ) -> Report:
        """Every check that proves the cluster serves."""
        ...

    def recover(
        self,
        cluster: Cluster,
        back: Sequence[str],
        conns: Mapping[str, Connection],
        progress: Progress,
    ) -> list[Recovery]:
        """After members in ``back`` (hostnames) came back (a reboot, a unit the watchdog
        found down) and post-install ran again: what the engine must redo for the cluster
        to serve (e.g. restart a head whose workers went away), in the order it did it."""
        ...


def load_checks(
    options: SmokeOptions, endpoint: Endpoint, model: str, progress: Progress
) -> list[Any]:
    """The load check on one served model, when the operator asked for it."""
    if not options.requests:
        return []

    progress(f"smoke: load check on {model}: {options.requests} requests, "
             f"{options.concurrency} at a time")  # fmt: skip
    return list(run_load_checks(endpoint, model, options.requests, options.concurrency,
                                min_rpm=options.min_rpm, max_p99_s=options.max_p99_s))  # fmt: skip


DEATH_POLL_S = 5.0  # how often a server's unit is asked whether it died, while waited for


def wait_healthy(
    endpoint: Endpoint,
    wait_s: float,
    label: str,
    progress: Progress,
    died: Callable[[], str | None] | None = None,
) -> str | None:
    """Wait for a server that was just (re)started to load its model (503 until then).
    With ``died`` (:func:`provisioner.smoke.cluster.death_watch`), asked every few seconds,
    the wait ends as soon as the server's unit dies; returns why, else None."""
    started = time.monotonic()
    while True:
        left = wait_s - (time.monotonic() - started)
        try:
            wait(endpoint, timeout=max(1.0, min(left, DEATH_POLL_S) if died else left))
            progress(f"smoke {label}: healthy after {time.monotonic() - started:.1f} s")
            return None
        except SmokeHttpError as exc:
            why = died() if died is not None else None
            if why is not None:
                progress(f"smoke {label}: {why}")
                return why
            if time.monotonic() - started >= wait_s:
                progress(f"smoke {label}: {exc}")
                return None


def teardowns(engine: ClusterEngine, cluster: Cluster) -> dict[str, Teardown]:
    """Per member (hostname): what its engine's recipes name under ``teardown:``."""
    context = {
        "cluster": {"name": cluster.name, "engine": cluster.engine.value, "head": cluster.head},
        **engine.teardown_context(cluster),
    }
    recipes = ("base", *engine.recipes(cluster))  # base: the node's firewall table
    return {h: teardown(recipes, cluster.role(h), context) for h in cluster.members}


def units_by_host(engine: ClusterEngine, cluster: Cluster) -> dict[str, tuple[str, ...]]:
    """The units smoke expects active on each member: the ones its recipes install."""
    return {h: t.units for h, t in teardowns(engine, cluster).items()}
