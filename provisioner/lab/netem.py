"""Network faults on a lab's bridge: packet loss and delay, as ``tc netem`` gives them.

A spec is the words of netem's own syntax that a lab needs, e.g. ``loss 10% delay 50ms``
or ``delay 50ms 10ms`` (a jitter), parsed and checked by :func:`parse` (a
:class:`~provisioner.errors.UsageError` for anything else). It is put on every port of
the lab's bridge, on the switch side (``<prefix>v0`` the appliance's, ``<prefix>c<i>``
a container node's, ``<prefix>t<i>`` a VM's tap): a port's egress is the traffic the
bridge sends to that host, so each frame crossing the bridge meets the faults once, in
each direction (a node's request on the appliance's port, the answer on the node's).
netem on the bridge device itself would shape only what the bridge sends up to its own
stack, which is nothing here.

Two ways to put it there, the same spec and the same places:

* ``tc``: a netem root qdisc on each port (:func:`tc_argv`), when the kernel has
  ``sch_netem``. A port made later (a container node rebooted) gets it from
  :func:`shape_port`.
* ``queue``, for kernels built without ``sch_netem`` (this project's lab machines):
  the bridge hands its IPv4 and IPv6 frames to iptables (``nf_call_iptables``), one
  rule queues every bridged frame to NFQUEUE (:func:`queue_rules`), and
  :mod:`provisioner.lab.netem_queue`, a process in the switch's namespace, drops or
  holds each one for the delay before letting it go. ARP passes unshaped. Ports made
  later are covered by the same rule.

:func:`apply` picks ``tc`` when the kernel takes a netem qdisc, else ``queue``; the lab
records which (``lab.json``) so that :func:`clear` undoes the right one.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.errors import UsageError
from provisioner.lab.netns import (
    BRIDGE,
    CommandError,
    LabError,
    Namespace,
    list_namespaces,
    spawn_detached,
    stop_pid,
)
from provisioner.lab.state import LabState

QUEUE_PID = "netem"  # the queue's process in lab.json's pids (`lab down` ends it)
QUEUE_NUM = 0  # the lab's switch namespace is its own: one queue number is enough
MAX_DELAY_MS = 10_000.0
_TIME = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)$")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
NO_NETEM = "Specified qdisc kind is unknown"  # tc's words when sch_netem is not built


@dataclass(frozen=True)
class Netem:
    """Faults for every frame crossing the bridge: ``loss_pct`` of them dropped, the
    rest held ``delay_ms`` (plus or minus up to ``jitter_ms``)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    def words(self) -> list[str]:
        """netem's own words for it (canonical: ``delay 50ms loss 10%``)."""
        words: list[str] = []
        if self.delay_ms:
            words += ["delay", _ms(self.delay_ms)]
            if self.jitter_ms:
                words.append(_ms(self.jitter_ms))
        if self.loss_pct:
            words += ["loss", f"{self.loss_pct:g}%"]
        return words

    def __str__(self) -> str:
        return " ".join(self.words()) or "none"

    def as_dict(self) -> dict[str, float]:
        return {"delay_ms": self.delay_ms, "jitter_ms": self.jitter_ms, "loss_pct": self.loss_pct}


def _ms(value: float) -> str:
    return f"{value:g}ms"


def _time(word: str, what: str) -> float:
    found = _TIME.match(word)
    if found is None:
        raise UsageError(f"netem: {what} {word!r} is not a time like 50ms, 200us or 1s")
    value = float(found[1]) * _UNIT_MS[found[2]]
    if value > MAX_DELAY_MS:
        raise UsageError(f"netem: {what} {word} is over {MAX_DELAY_MS / 1000:g} s")
    return value


def _percent(word: str, what: str) -> float:
    found = _PERCENT.match(word)
    if found is None or float(found[1]) > 100:
        raise UsageError(f"netem: {what} {word!r} is not a percentage like 10%")
    return float(found[1])


def parse(text: str) -> Netem:
    """``loss P%`` and ``delay T [JITTER]`` in any order, each at most once; times in us,
    ms or s. Anything else (netem's other faults included) is a UsageError."""
    words = text.split()
    if not words:
        raise UsageError("netem: an empty spec (want e.g. 'loss 10% delay 50ms')")
    seen: set[str] = set()
    delay = jitter = loss = 0.0
    i = 0
    while i < len(words):
        key = words[i]
        if key not in ("delay", "loss"):
            raise UsageError(f"netem: {key!r}: only 'delay T [JITTER]' and 'loss P%' are known")
        if key in seen:
            raise UsageError(f"netem: {key} given twice")
        seen.add(key)
        if i + 1 >= len(words):
            raise UsageError(f"netem: {key} wants a value")
        if key == "loss":
            loss = _percent(words[i + 1], "loss")
            i += 2
            continue
        delay = _time(words[i + 1], "delay")
        i += 2
        if i < len(words) and words[i] not in ("delay", "loss"):
            jitter = _time(words[i], "jitter")
            i += 1
    spec = Netem(delay, jitter, loss)
    if spec.jitter_ms > spec.delay_ms:
        raise UsageError(f"netem: jitter {_ms(jitter)} is more than the delay {_ms(delay)}")
    return spec


# ------------------------------------------------------------------- pure: command lines


def tc_argv(spec: Netem, port: str) -> list[str]:
    """The netem root qdisc on ``port`` (replacing whatever root it had)."""
    return ["tc", "qdisc", "replace", "dev", port, "root", "netem", *spec.words()]


def tc_clear_argv(port: str) -> list[str]:
    return ["tc", "qdisc", "del", "dev", port, "root"]


def bridge_calls_argv(on: bool) -> list[str]:
    """The bridge hands (or stops handing) its IPv4 and IPv6 frames to ip(6)tables."""
    flag = "1" if on else "0"
    return ["ip", "link", "set", BRIDGE, "type", "bridge",
            "nf_call_iptables", flag, "nf_call_ip6tables", flag]  # fmt: skip


def queue_rules(action: str) -> list[list[str]]:
    """Every frame the bridge forwards, to NFQUEUE :data:`QUEUE_NUM` (``-A``, add) or
    not (``-D``); ``--queue-bypass``: the frames pass when no process holds the queue."""
    rule = ["FORWARD", "-m", "physdev", "--physdev-is-bridged", "-j", "NFQUEUE",
            "--queue-num", str(QUEUE_NUM), "--queue-bypass"]  # fmt: skip
    return [[tool, "-w", action, *rule] for tool in ("iptables", "ip6tables")]


def queue_argv(spec: Netem) -> list[str]:
    """The userspace netem (:mod:`provisioner.lab.netem_queue`) for ``spec``."""
    return [sys.executable, "-m", "provisioner.lab.netem_queue", "--queue", str(QUEUE_NUM),
            "--delay-ms", f"{spec.delay_ms:g}", "--jitter-ms", f"{spec.jitter_ms:g}",
            "--loss", f"{spec.loss_pct:g}"]  # fmt: skip


def ports_of(links: Sequence[dict[str, Any]]) -> list[str]:
    """The bridge's ports in ``ip -j link show master br0``'s output."""
    return sorted(str(link["ifname"]) for link in links if link.get("ifname"))


# ------------------------------------------------------------------- I/O


def bridge_ports(switch: Namespace) -> list[str]:
    done = switch.run(["ip", "-j", "link", "show", "master", BRIDGE])
    return ports_of(json.loads(done.stdout or "[]"))


def shape_port(switch: Namespace, spec: Netem, port: str) -> None:
    """netem on one port (``tc``): a port made after :func:`apply`."""
    switch.run(tc_argv(spec, port))


def has_tc_netem(switch: Namespace, port: str, spec: Netem) -> bool:
    """Whether the kernel takes a netem qdisc (tried on ``port``, left there if so)."""
    try:
        switch.run(tc_argv(spec, port))
    except CommandError as exc:
        if NO_NETEM in exc.stderr:
            return False
        raise
    return True


def apply(switch: Namespace, spec: Netem) -> str:
    """Put ``spec`` on every port of the bridge; the way it went there (``tc`` or
    ``queue``; with ``queue`` the caller starts :func:`queue_argv` in ``switch``)."""
    ports = bridge_ports(switch)
    if not ports:
        raise LabError(f"{switch.name}: the bridge has no ports to shape")
    if has_tc_netem(switch, ports[0], spec):
        for port in ports[1:]:
            shape_port(switch, spec, port)
        return "tc"
    switch.run(bridge_calls_argv(True))
    for argv in queue_rules("-A"):
        switch.run(argv)
    return "queue"


def clear(switch: Namespace, way: str) -> None:
    """Undo :func:`apply` (``way``: what it returned; the queue's process is the
    caller's to end)."""
    if way == "tc":
        for port in bridge_ports(switch):
            switch.run(tc_clear_argv(port), check=False)
        return
    for argv in queue_rules("-D"):
        switch.run(argv, check=False)
    switch.run(bridge_calls_argv(False), check=False)


def _bound(switch: Namespace, queue: int) -> bool:
    """Whether a process holds NFQUEUE ``queue`` in ``switch``'s namespace."""
    done = switch.run(["cat", "/proc/net/netfilter/nfnetlink_queue"], check=False)
    return any(line.split()[:1] == [str(queue)] for line in done.stdout.splitlines())


# ------------------------------------------------------------------- a lab's faults


def set_faults(lab: LabState, spec: Netem | None, progress: Callable[[str], None]) -> None:
    """Put ``spec`` on ``lab``'s bridge in place of the faults it has (None: none);
    recorded in its ``lab.json``."""
    switch = Namespace(f"{lab.prefix}-sw")
    if lab.netem_way is not None:
        clear(switch, lab.netem_way)
        pid = lab.pids.pop(QUEUE_PID, None)
        if pid is not None:
            stop_pid(pid)
        progress(f"lab {lab.prefix}: faults on the bridge cleared ({lab.netem})")
        lab.netem = lab.netem_way = None
        lab.save()
    if spec is None:
        return
    way = apply(switch, spec)
    lab.netem, lab.netem_way = str(spec), way
    if way == "queue":
        log = Path(lab.directory) / "netem.log"
        lab.pids[QUEUE_PID] = spawn_detached(switch, queue_argv(spec), log)
        deadline = time.monotonic() + 10
        while not _bound(switch, QUEUE_NUM):
            if time.monotonic() > deadline:
                lab.save()
                raise LabError(f"the netem queue did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    lab.save()
    how = "netem qdiscs" if way == "tc" else "an NFQUEUE process (the kernel has no sch_netem)"
    progress(f"lab {lab.prefix}: {spec} on every port of the bridge, by {how}")


def port_shaper(lab: LabState) -> Callable[[str], None] | None:
    """What shapes a port made after :func:`set_faults` (a node started or rebooted):
    with ``tc`` a qdisc on it; with ``queue`` nothing (the rule covers every port)."""
    if lab.netem is None or lab.netem_way != "tc":
        return None
    switch, spec = Namespace(f"{lab.prefix}-sw"), parse(lab.netem)
    return lambda port: shape_port(switch, spec, port)


def lab_faults(directory: Path, spec: Netem | None, progress: Callable[[str], None]) -> LabState:
    """`lab netem`: ``spec`` on the bridge of the lab that is up in ``directory``."""
    lab = LabState.load(directory)
    if lab is None or f"{lab.prefix}-sw" not in list_namespaces():
        raise LabError(f"no lab is up in {directory} (provisioner lab up)")
    set_faults(lab, spec, progress)
    return lab
