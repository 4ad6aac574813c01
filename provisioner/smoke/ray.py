"""What Ray says of a cluster's members, as checks.

The head is asked with :func:`ray_nodes_command` (the caller runs it there over SSH, with
``RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=...`` in front when the cluster uses token
auth): a driver joins the running cluster and prints ``ray.nodes()`` as JSON, one object
a node, the dead ones included (``Alive`` false, ``Resources`` empty). Why that command
(real outputs of each, from Ray 2.60, are in tests/fixtures/ray/):

- ``ray status [-v]`` names the nodes by id only, never by address (``status-v.txt``);
- ``ray list nodes --format json`` asks the dashboard's state API, so it needs
  ``ray[default]`` and a running dashboard, and fails without (``list-nodes-no-dashboard.txt``);
- ``ray.nodes()`` is public API, needs only the GCS (token auth comes from the
  environment, like every Ray client) and has what a member check needs:
  ``NodeManagerAddress`` (the ``--node-ip-address`` a node was started with), ``Alive``,
  ``Resources`` (``CPU``, ``GPU``) and ``NodeID``. Joining takes about 2 s.

Pure: :func:`parse_ray_nodes` (text to :class:`RayNode` s; :class:`RayOutputError` on
anything else), :func:`ray_member_checks` and :func:`ray_checks` (text to checks, which
never raises: a bad answer is a failed ``ray_nodes`` check that says what came back).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provisioner.errors import ProvisionerError
from provisioner.smoke.report import Check

_NODES_SCRIPT = (
    "import json, ray; "
    "ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False); "
    "print(json.dumps(ray.nodes()))"
)


class RayOutputError(ProvisionerError):
    """What came back from the head is no list of Ray nodes (Ray's fault, or the command's)."""


@dataclass(frozen=True)
class RayNode:
    node_id: str
    address: str  # NodeManagerAddress: the node's --node-ip-address
    alive: bool
    cpus: float = 0.0
    gpus: float = 0.0
    port: int | None = None  # NodeManagerPort: tells apart nodes that share an address
    hostname: str = ""
    resources: Mapping[str, float] = field(default_factory=dict)
    death: str = ""  # DeathReasonMessage of a dead node

    @property
    def where(self) -> str:
        return f"{self.address}:{self.port}" if self.port else self.address


def ray_nodes_command(venv_bin: str, address: str = "auto") -> str:
    """The shell command that prints Ray's node list as JSON, run on the head.

    ``venv_bin`` is the ``bin`` folder of the venv Ray is installed in; ``address`` the
    GCS (``host:port``), or ``auto`` for the cluster this machine is part of. Token auth
    is read from ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN_PATH`` set in front of it.
    """
    python = venv_bin.rstrip("/") + "/python"
    return f"{shlex.quote(python)} -c {shlex.quote(_NODES_SCRIPT.format(address=address))}"


def parse_ray_nodes(text: str) -> list[RayNode]:
    """The nodes in the output of :func:`ray_nodes_command`: the last line that is a JSON
    list (log lines around it are skipped). Raises :class:`RayOutputError`."""
    entries = _last_json_list(text)
    if entries is None:
        raise RayOutputError(f"no node list in Ray's answer: {_gist(text)}")
    return [_node(i, entry) for i, entry in enumerate(entries)]


def _last_json_list(text: str) -> list[Any] | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not line.startswith("["):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, list):
            return value
    return None


def _gist(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "nothing"
    gist = lines[-1][:200]
    if "InvalidAuthToken" in text or "Unauthenticated" in text:
        gist += " (the GCS refused the auth token: check RAY_AUTH_TOKEN_PATH)"
    return gist


def _node(i: int, entry: object) -> RayNode:
    if not isinstance(entry, dict):
        raise RayOutputError(f"node {i} is not an object: {str(entry)[:80]!r}")
    node_id, address = entry.get("NodeID"), entry.get("NodeManagerAddress")
    if not isinstance(node_id, str) or not isinstance(address, str) or not address:
        raise RayOutputError(f"node {i} has no NodeID or NodeManagerAddress: {str(entry)[:120]}")
    alive = entry.get("Alive", entry.get("alive"))
    if not isinstance(alive, bool):
        raise RayOutputError(f"node {i} ({address}) says neither Alive true nor false")
    raw = entry.get("Resources")
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise RayOutputError(f"node {i} ({address}): Resources is not an object")
    resources = {
        str(k): float(v)
        for k, v in raw.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    port = entry.get("NodeManagerPort")
    return RayNode(
        node_id=node_id,
        address=address,
        alive=alive,
        cpus=resources.get("CPU", 0.0),
        gpus=resources.get("GPU", 0.0),
        port=port if isinstance(port, int) and not isinstance(port, bool) else None,
        hostname=str(entry.get("NodeManagerHostname") or ""),
        resources=resources,
        death=str(entry.get("DeathReasonMessage") or ""),
    )


def _count(v: float) -> float | int:
    return int(v) if v == int(v) else v


def _resources(node: RayNode) -> str:
    parts = [f"{_count(node.cpus)} CPU", f"{_count(node.gpus)} GPU"]
    if "memory" in node.resources:
        parts.append(f"{node.resources['memory'] / 2**30:.1f} GiB memory")
    skip = {"CPU", "GPU", "memory", "object_store_memory"}
    parts += [
        f"{_count(v)} {k}" for k, v in sorted(node.resources.items())
        if k not in skip and not k.startswith("node:")
    ]  # fmt: skip
    return ", ".join(parts)


def _split(address: str) -> tuple[str, int | None]:
    """``ip`` or ``ip:node-manager-port`` (IPv6 in brackets when a port follows)."""
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and (host.count(":") == 0 or host.startswith("[")):
        return host.strip("[]"), int(port)
    return address.strip("[]"), None


def ray_member_checks(
    nodes: Sequence[RayNode],
    members: Mapping[str, str],
    gpus_expected: Mapping[str, int] | None = None,
) -> list[Check]:
    """One ``ray_member[<hostname>]`` check a member, then ``ray_nodes``.

    ``members`` maps each hostname to the address its Ray node was started with (an
    ``ip``, or ``ip:port`` with the node manager's port where members share an ip). A
    member passes when a live node has its address (each node answers for one member
    only); the value is its GPU count (with ``gpus_expected`` for it, at least that
    many) or, for a node without GPUs, its CPU count. ``ray_nodes`` passes when Ray has
    exactly as many live nodes as there are members.
    """
    live = [n for n in nodes if n.alive]
    claimed: dict[int, str] = {}  # index in live -> hostname
    found: dict[str, RayNode] = {}
    wanted = {h: _split(a) for h, a in members.items()}
    # members with a port are exact: they choose first
    for hostname in sorted(members, key=lambda h: wanted[h][1] is None):
        ip, port = wanted[hostname]
        for i, candidate in enumerate(live):
            if i not in claimed and candidate.address == ip and port in (None, candidate.port):
                claimed[i] = hostname
                found[hostname] = candidate
                break
    checks = []
    for hostname in members:
        expected = (gpus_expected or {}).get(hostname)
        node = found.get(hostname)
        if node is None:
            detail = _missing(nodes, live, claimed, wanted[hostname])
            checks.append(Check(f"ray_member[{hostname}]", False, None, expected, detail))
            continue
        gpu = node.gpus > 0 or expected is not None
        value = _count(node.gpus if gpu else node.cpus)
        ok = expected is None or node.gpus >= expected
        detail = f"node {node.node_id[:12]} at {node.where}: {_resources(node)}"
        if not ok:
            detail = f"{expected} GPU expected; {detail}"
        checks.append(Check(f"ray_member[{hostname}]", ok, value, expected, detail))
    strangers = [n.where for i, n in enumerate(live) if i not in claimed]
    dead = [n for n in nodes if not n.alive]
    detail = f"{len(live)} live, {len(dead)} dead"
    if strangers:
        detail += f"; live and no member: {', '.join(strangers)}"
    checks.append(Check("ray_nodes", len(live) == len(members), len(live), len(members), detail))
    return checks


def _missing(
    nodes: Sequence[RayNode],
    live: Sequence[RayNode],
    claimed: Mapping[int, str],
    wanted: tuple[str, int | None],
) -> str:
    ip, port = wanted
    at = f"{ip}:{port}" if port else ip
    dead = [n for n in nodes if not n.alive and n.address == ip and port in (None, n.port)]
    taken = [h for i, h in claimed.items() if live[i].address == ip]
    if dead:
        why = f": {dead[-1].death}" if dead[-1].death else ""
        return f"Ray has the node at {at} dead{why}"
    if taken:
        return f"no live node at {at} left (taken by {', '.join(taken)})"
    others = ", ".join(n.where for n in live) or "none"
    return f"no node at {at} in Ray's view (live: {others})"


def ray_checks(
    output: str,
    members: Mapping[str, str],
    gpus_expected: Mapping[str, int] | None = None,
) -> list[Check]:
    """:func:`ray_member_checks` on the output of :func:`ray_nodes_command` (stdout, or
    stdout and stderr together); never raises: an answer that is no node list fails
    ``ray_nodes`` with what came back, and every member with it."""
    try:
        nodes = parse_ray_nodes(output)
    except RayOutputError as exc:
        expected = gpus_expected or {}
        return [
            *(
                Check(f"ray_member[{h}]", False, None, expected.get(h), "no node list from Ray")
                for h in members
            ),
            Check("ray_nodes", False, None, len(members), str(exc)),
        ]
    return ray_member_checks(nodes, members, gpus_expected)
