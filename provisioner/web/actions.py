"""What a logged-in operator can do from the dashboard, each the same operation a command
does, recorded on the node's timeline the same way:

- ``power-cycle`` (``provisioner power cycle``): through the node's power driver, with
  the BMC passwords from the usual credential files; a ``power`` event either way;
- ``enroll`` (``provisioner enroll [--power-cycle]``): ``enrolling``, and a power cycle
  where the node has power settings (else the operator powers it on);
- ``boot-local`` / ``boot-network`` (``provisioner node boot``);
- ``smoke`` of a cluster (``provisioner smoke``), in the background: its verdict lands on
  the members' steps and states, and so on the cluster page, when it is done.

Each returns one line for the page (or raises :class:`ActionError` with the reason). The
power calls block for up to :data:`POWER_TIMEOUT_S`: the routes run them in a thread.
"""

from __future__ import annotations

import logging
import threading

from provisioner.clusters import store as clusters
from provisioner.clusters.engines.base import SmokeOptions
from provisioner.clusters.site import Site
from provisioner.clusters.smoke import floors_for, smoke
from provisioner.config import Config
from provisioner.enroll import lifecycle
from provisioner.enroll import power_cycle as enrollment
from provisioner.errors import IllegalTransition, ProvisionerError, RegistryError
from provisioner.power import open_driver
from provisioner.power.base import Operation, perform
from provisioner.power.credentials import candidate_files, load_store
from provisioner.power.run import one_line
from provisioner.power.settings import parse_power_url
from provisioner.records import Detail, EventKind
from provisioner.registry import Registry

log = logging.getLogger(__name__)

POWER_TIMEOUT_S = 30.0
NODE_ACTIONS = ("power-cycle", "enroll", "boot-local", "boot-network")


class ActionError(ProvisionerError):
    """An action the dashboard could not carry out; the reason is for the operator."""


class Actions:
    def __init__(self, cfg: Config, registry: Registry):
        self.cfg = cfg
        self.registry = registry
        self._smokes: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def node(self, key: str, action: str) -> str:
        node = self.registry.node(key)
        if node is None:
            raise ActionError(f"no node {key}")
        name = node.hostname or node.mac
        try:
            if action == "power-cycle":
                return self._power_cycle(node.mac, name)
            if action == "enroll":
                powered = self.registry.power(node.mac) is not None
                store = load_store(candidate_files(None, self.cfg.state_dir))
                [item] = enrollment.start(
                    self.registry, [node.mac], store=store, power_timeout=POWER_TIMEOUT_S,
                    progress=lambda line: log.info("dashboard enroll: %s", line),
                    power_cycle=powered,
                )  # fmt: skip
                if item.outcome == "failed":
                    raise ActionError(f"{name}: enroll failed: {item.error}")
                then = "; power cycle sent" if powered else ": power it on to boot from the network"
                return f"{name}: enrolling{then}"
            if action in ("boot-local", "boot-network"):
                target = lifecycle.BootTarget(action.removeprefix("boot-"))
                lifecycle.boot(self.registry, node.mac, target, by="dashboard")
                return f"{name}: boots from {target.value} next"
        except (IllegalTransition, RegistryError) as exc:
            raise ActionError(f"{name}: {exc}") from exc
        raise ActionError(f"unknown action {action!r}: one of {', '.join(NODE_ACTIONS)}")

    def _power_cycle(self, mac: str, name: str) -> str:
        url = self.registry.power(mac)
        if url is None:
            raise ActionError(
                f"{name} has no power settings (provisioner node add ... --power URL)"
            )
        try:
            settings = parse_power_url(url)
            driver = open_driver(
                settings, node=name, timeout=POWER_TIMEOUT_S, firmware=None,
                credentials=load_store(candidate_files(None, self.cfg.state_dir)),
            )  # fmt: skip
            perform(driver, Operation.CYCLE)
        except Exception as exc:  # any driver failure is the operator's one line
            error = one_line(exc)
            detail: Detail = {"op": "cycle", "ok": False, "error": error, "by": "dashboard"}
            self.registry.add_event(mac, EventKind.POWER, detail)
            raise ActionError(f"{name}: power cycle failed: {error}") from exc
        self.registry.add_event(
            mac, EventKind.POWER, {"op": "cycle", "ok": True, "by": "dashboard"}
        )
        return f"{name}: power cycle sent ({settings.driver.value})"

    def smoke(self, cluster_name: str) -> str:
        """Start a smoke of the cluster in the background (one at a time per cluster)."""
        try:
            cluster = clusters.load(self.registry, cluster_name)
        except ProvisionerError as exc:
            raise ActionError(str(exc)) from exc
        with self._lock:
            running = self._smokes.get(cluster.name)
            if running is not None and running.is_alive():
                raise ActionError(f"{cluster.name}: a smoke is running already")
            thread = threading.Thread(target=self._smoke, args=(cluster.name,),
                                      name=f"smoke-{cluster.name}", daemon=True)  # fmt: skip
            self._smokes[cluster.name] = thread
            thread.start()
        return f"{cluster.name}: smoke started; its verdict shows here when it is done"

    def smoking(self, cluster_name: str) -> bool:
        thread = self._smokes.get(cluster_name)
        return thread is not None and thread.is_alive()

    def _smoke(self, name: str) -> None:
        try:
            site = Site.open(self.cfg, self.registry)
            cluster = clusters.load(self.registry, name)
            report = smoke(site, cluster, SmokeOptions(restart=False), floors_for(site, cluster),
                           lambda line: log.info("dashboard smoke %s: %s", name, line))  # fmt: skip
            log.info("dashboard smoke %s: %s", name, "passed" if report.passed else "failed")
        except Exception:  # the page shows the members' states; the log has the why
            log.exception("dashboard smoke %s failed", name)
