"""Network namespaces as lab building blocks: hosts on a private Linux bridge.

A :class:`LabNetwork` is a throw-away Ethernet segment built only from network
namespaces, so that DHCP, TFTP and HTTP traffic never reaches the machine's own
interfaces::

    <prefix>-sw      the "switch": a bridge br0 and one veth end per host
    <prefix>-<host>  one namespace per host, its veth end renamed eth0

Every name starts with a short unique prefix (``pv`` + 6 hex digits) so parallel
runs and leftovers never collide; :func:`cleanup` removes leftovers by prefix.

:meth:`LabNetwork.attach_host` gives the machine itself (its root namespace) a leg on
the segment, through one of its hosts (the appliance): a veth pair ``<prefix>h0`` (here,
with an address of the lab's subnet as a /32) and ``<prefix>h1`` (in that host's
namespace, which forwards the machine's connections onto the segment under its own
address, SNAT, and forwards nothing else). Nodes then see the control node: a node's
firewall that lets only the control node in lets these in too. The only route added
here is for the subnet via that host on ``<prefix>h0``: it lives and dies with that link,
and deleting the host's namespace deletes both ends, so nothing of the leg can outlive
the lab. Its IPv6 is off (router advertisements must not give the machine a route).
:func:`overlapping_routes` (pure) tells whether the machine already routes the subnet
more specifically than a default or a wider route: a site network or another lab's leg,
where a second leg would be ambiguous.
Processes started through the network are tracked by PID and ended by
:meth:`LabNetwork.close` (SIGTERM, then SIGKILL after a grace period) before the
namespaces are deleted, the switch last.

Errors: :class:`LabError` (a :class:`~provisioner.errors.ProvisionerError`) and its
child :class:`CommandError` for a command that failed or timed out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from provisioner.errors import ProvisionerError

log = logging.getLogger(__name__)

PREFIX_ROOT = "pv"
PREFIX_LEN = len(PREFIX_ROOT) + 6  # pv and 6 hex digits (new_prefix)
DEFAULT_TIMEOUT = 30.0
DEFAULT_GRACE = 3.0
BRIDGE = "br0"
HOST_IFACE = "eth0"
IFNAMSIZ = 15  # longest interface name the kernel accepts
LEG_HOST_END = "h0"  # <prefix>h0: the machine's end of its leg on the segment
LEG_BRIDGE_END = "h1"  # <prefix>h1: the leg's end on the bridge

_HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_LEG = re.compile(rf"^{PREFIX_ROOT}[0-9a-f]{{6}}{LEG_HOST_END}$")  # what cleanup may delete
_QUIET_SYSCTLS = (
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
)

Redirect = int | IO[Any] | None


class LabError(ProvisionerError):
    """The lab network could not be built, used or torn down."""


class CommandError(LabError):
    """A command run for the lab exited non-zero or ran out of time."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        status = "timed out" if returncode is None else f"exited {returncode}"
        detail = f": {stderr.strip()}" if stderr.strip() else ""
        super().__init__(f"{' '.join(self.argv)} {status}{detail}")


def new_prefix() -> str:
    """A fresh name prefix: ``pv`` and 6 random hex digits."""
    return PREFIX_ROOT + secrets.token_hex(3)


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (``input`` on its stdin); translate failures into :class:`CommandError`."""
    try:
        done = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, None, f"after {timeout}s") from exc
    except OSError as exc:
        raise CommandError(argv, None, str(exc)) from exc
    if check and done.returncode != 0:
        raise CommandError(argv, done.returncode, done.stderr)
    return done


@dataclass(frozen=True)
class Namespace:
    """A named network namespace; commands run in it through ``ip netns exec``.

    ``on_spawn`` is called with every process :meth:`popen` starts, so that the
    owner (a :class:`LabNetwork`) can end it later.
    """

    name: str
    on_spawn: Callable[[subprocess.Popen[bytes]], None] | None = field(
        default=None, compare=False, repr=False
    )

    def argv(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` here to completion (``input`` on its stdin), output as text."""
        return _run(self.argv(argv), check=check, timeout=timeout, input=input)

    def popen(
        self,
        argv: Sequence[str],
        *,
        stdout: Redirect = subprocess.DEVNULL,
        stderr: Redirect = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` here in the background (``ip netns exec`` execs it: same PID)."""
        full = self.argv(argv)
        try:
            proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
        except OSError as exc:
            raise CommandError(full, None, str(exc)) from exc
        log.debug("started pid=%d netns=%s argv=%s", proc.pid, self.name, list(argv))
        if self.on_spawn is not None:
            self.on_spawn(proc)
        return proc

    def pids(self) -> list[int]:
        """PIDs of every process living in this namespace."""
        done = _run(["ip", "netns", "pids", self.name], check=False)
        return [int(word) for word in done.stdout.split() if word.isdigit()]


@dataclass(frozen=True)
class HostSpec:
    """A host to put on the lab segment: its name, optional address and MAC."""

    name: str
    address: IPv4Interface | None = None
    mac: str | None = None

    def __post_init__(self) -> None:
        if not _HOST_NAME.match(self.name):
            raise LabError(f"host name {self.name!r}: want [a-z][a-z0-9]*, at most 12 chars")
        if self.mac is not None and not _MAC.match(self.mac):
            raise LabError(f"host {self.name}: MAC {self.mac!r} is not aa:bb:cc:dd:ee:ff")


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    done = _run(["ip", "netns", "list"])
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _end_processes(procs: Iterable[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM each process, SIGKILL what is left after ``grace`` seconds, reap all."""
    live = [proc for proc in procs if proc.poll() is None]
    for proc in live:
        proc.terminate()
    deadline = time.monotonic() + grace
    for proc in live:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid=%d ignored SIGTERM for %.1fs, sending SIGKILL", proc.pid, grace)
            proc.kill()
            proc.wait()


def _end_pids(pids: Iterable[int], grace: float) -> None:
    """Like :func:`_end_processes` for PIDs we did not spawn ourselves (no reaping)."""
    pending = set(pids)
    for pid in list(pending):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pending.discard(pid)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        pending = {pid for pid in pending if _alive(pid)}
    for pid in pending:
        log.warning("pid=%d ignored SIGTERM for %.1fs, sending SIGKILL", pid, grace)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _delete_namespace(name: str, grace: float) -> None:
    """End the processes still inside namespace ``name``, then delete it."""
    _end_pids(Namespace(name).pids(), grace)
    _run(["ip", "netns", "delete", name], check=False)


def leg_name(prefix: str) -> str:
    """The machine's end of a lab's leg (root namespace), e.g. ``pv1a2b3ch0``."""
    return prefix + LEG_HOST_END


def overlapping_routes(routes: Iterable[dict[str, Any]], subnet: IPv4Network) -> list[str]:
    """Routes (``ip -j -4 route show``) that would compete with a connected route for
    ``subnet``: as or more specific and overlapping it. A default or a wider route does
    not (the leg's route beats it); described as ``dst dev``, e.g. ``10.99.0.0/24 dev x``."""
    found = []
    for route in routes:
        dst = str(route.get("dst", ""))
        if dst in ("", "default") or route.get("type", "unicast") in ("local", "broadcast"):
            continue
        try:
            net = IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False)
        except ValueError:
            continue
        if net.prefixlen >= subnet.prefixlen and net.overlaps(subnet):
            found.append(f"{dst} dev {route.get('dev', '?')}")
    return found


def host_routes() -> list[dict[str, Any]]:
    """The machine's IPv4 routes (main table, root namespace), as ``ip -j`` gives them."""
    done = _run(["ip", "-j", "-4", "route", "show"])
    routes: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return routes


def _leg_rules(port: str, source: IPv4Address, gateway: IPv4Address) -> str:
    """nftables rules for the namespace a leg goes through: this machine's connections
    out onto the segment as ``gateway``, their replies back; nothing else forwarded."""
    return (
        "table ip provisioner_leg {\n"
        "  chain forward { type filter hook forward priority 0; policy drop;\n"
        "    ct state established,related accept\n"
        f'    iifname "{port}" ip saddr {source} accept\n'
        "  }\n"
        "  chain postrouting { type nat hook postrouting priority 100;\n"
        f'    ip saddr {source} oifname != "{port}" snat to {gateway}\n'
        "  }\n"
        "}\n"
    )


def _host_legs() -> list[str]:
    """Names of the lab legs in the root namespace (veth links named ``pv<hex>h0``)."""
    done = _run(["ip", "-j", "link", "show", "type", "veth"], check=False)
    links: list[dict[str, Any]] = json.loads(done.stdout or "[]") if done.returncode == 0 else []
    return [str(link["ifname"]) for link in links if _LEG.match(str(link.get("ifname", "")))]


def _delete_leg(name: str) -> None:
    """Delete a leg by its root end (the bridge end and the connected route go with it)."""
    _run(["ip", "link", "delete", name], check=False)


def remove_orphan_legs() -> list[str]:
    """Delete the machine's legs whose lab is gone (no namespace of its prefix is left,
    e.g. a run killed before its ``lab down``): such a leg still routes the lab's subnet
    into nothing and would keep the next lab from having a leg. Their names."""
    alive = {name[:PREFIX_LEN] for name in list_namespaces()}
    orphans = [leg for leg in _host_legs() if leg[:PREFIX_LEN] not in alive]
    for leg in orphans:
        log.warning("removing lab leg %s: no namespace of its lab is left", leg)
        _delete_leg(leg)
    return orphans


def cleanup(prefix: str, *, grace: float = DEFAULT_GRACE) -> list[str]:
    """Remove every namespace whose name starts with ``prefix``; return their names.

    The machine's legs on those labs (``<prefix>h0``) go first; processes still inside
    the namespaces (a previous run's servers) are ended; the switch namespaces
    (``*-sw``) go last so that veth pairs die from the host end.
    """
    if len(prefix) < len(PREFIX_ROOT):
        raise LabError(f"cleanup prefix {prefix!r} is too short to be safe")
    for leg in _host_legs():
        if leg.startswith(prefix):
            log.info("removing leftover lab leg %s", leg)
            _delete_leg(leg)
    doomed = [name for name in list_namespaces() if name.startswith(prefix)]
    doomed.sort(key=lambda name: (name.endswith("-sw"), name))
    for name in doomed:
        log.info("removing leftover netns=%s", name)
        _delete_namespace(name, grace)
    return doomed


class LabNetwork:
    """A bridge in a switch namespace and hosts joined to it; a context manager.

    >>> with LabNetwork([HostSpec("site", IPv4Interface("10.77.0.2/24"))]) as lab:
    ...     lab.host("site").run(["ip", "addr"])
    """

    def __init__(
        self,
        hosts: Iterable[HostSpec] = (),
        *,
        prefix: str | None = None,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self.prefix = prefix or new_prefix()
        if len(self.prefix) + 4 > IFNAMSIZ:
            raise LabError(f"prefix {self.prefix!r} leaves no room in a {IFNAMSIZ}-char name")
        self.grace = grace
        self._specs = list(hosts)
        self._hosts: dict[str, Namespace] = {}
        self._macs: dict[str, str] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._created: list[str] = []
        self._switch: Namespace | None = None
        self._leg: str | None = None

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> LabNetwork:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Create the switch and the hosts given at construction."""
        if self._switch is not None:
            raise LabError(f"lab {self.prefix} is already open")
        try:
            switch = self._new_namespace(f"{self.prefix}-sw")
            switch.run(
                ["ip", "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0",
                 "stp_state", "0", "mcast_snooping", "0"]
            )  # fmt: skip
            switch.run(["ip", "link", "set", BRIDGE, "up"])
            self._switch = switch
            for spec in self._specs:
                self._add(spec)
        except BaseException:
            self.close()
            raise
        log.info("lab %s up with hosts %s", self.prefix, sorted(self._hosts))

    def close(self) -> None:
        """End tracked processes, then delete the namespaces (switch last). Idempotent."""
        procs, self._procs = self._procs, []
        try:
            _end_processes(procs, self.grace)
        finally:
            for proc in procs:
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
            if self._leg is not None:
                _delete_leg(self._leg)
                self._leg = None
            created, self._created = self._created, []
            for name in sorted(created, key=lambda n: n.endswith("-sw")):
                _delete_namespace(name, self.grace)
            self._hosts.clear()
            self._macs.clear()
            self._switch = None

    # -- hosts ---------------------------------------------------------------

    def add_host(
        self, name: str, *, address: IPv4Interface | str | None = None, mac: str | None = None
    ) -> Namespace:
        """Join one more host to the (open) segment and return its namespace."""
        if isinstance(address, str):
            address = IPv4Interface(address)
        return self._add(HostSpec(name, address, mac.lower() if mac else None))

    def attach_host(self, via: str, address: IPv4Interface | str) -> str:
        """Put this machine (the root namespace) on the segment at ``address``, routed
        through host ``via`` (the appliance): a veth pair from here into ``via``'s
        namespace, which forwards this machine's connections onto the segment under its
        own address (SNAT), so that nodes see them come from the control node. The only
        route added here is for ``address.network`` via ``via`` on the new link: it goes
        with the link. ``via`` forwards nothing the other way. Returns the link's name."""
        if isinstance(address, str):
            address = IPv4Interface(address)
        if self._leg is not None:
            raise LabError(f"lab {self.prefix} already has this machine on it ({self._leg})")
        router = self.host(via)
        spec = next((s for s in self._specs if s.name == via and s.address), None)
        if spec is None or spec.address is None or address not in spec.address.network:
            raise LabError(f"lab {self.prefix}: {via} has no address in {address.network}")
        gateway, me = spec.address.ip, address.ip
        leg, port = leg_name(self.prefix), self.prefix + LEG_BRIDGE_END
        _run(["ip", "link", "add", leg, "type", "veth", "peer", "name", port,
              "netns", router.name])  # fmt: skip
        self._leg = leg
        _run(["sysctl", "-q", "-w", f"net.ipv6.conf.{leg}.disable_ipv6=1"], check=False)
        _run(["ip", "addr", "add", f"{me}/32", "dev", leg])
        _run(["ip", "link", "set", leg, "up"])
        router.run(["ip", "link", "set", port, "up"])
        router.run(["ip", "route", "add", f"{me}/32", "dev", port])
        router.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        router.run(["nft", "-f", "-"], input=_leg_rules(port, me, gateway))
        _run(["ip", "route", "add", str(address.network), "via", str(gateway), "dev", leg,
              "onlink", "src", str(me)])  # fmt: skip
        log.info("lab %s: this machine on the segment as %s via %s (%s)", self.prefix, me, via, leg)
        return leg

    @property
    def leg(self) -> str | None:
        """This machine's end of its leg on the segment (None: it has none)."""
        return self._leg

    def host(self, name: str) -> Namespace:
        """The namespace of host ``name``; its processes are tracked by this lab."""
        try:
            return self._hosts[name]
        except KeyError:
            raise LabError(f"lab {self.prefix} has no host {name!r}") from None

    def mac(self, name: str) -> str:
        """The MAC address of host ``name``'s eth0."""
        self.host(name)
        return self._macs[name]

    @property
    def switch(self) -> Namespace:
        if self._switch is None:
            raise LabError(f"lab {self.prefix} is not open")
        return self._switch

    @property
    def hosts(self) -> list[str]:
        return list(self._hosts)

    def namespaces(self) -> list[str]:
        """Names of the namespaces this lab created and has not yet deleted."""
        return list(self._created)

    def pids(self) -> list[int]:
        """PIDs of the tracked processes that are still running."""
        return [proc.pid for proc in self._procs if proc.poll() is None]

    # -- internals -----------------------------------------------------------

    def _track(self, proc: subprocess.Popen[bytes]) -> None:
        self._procs.append(proc)

    def _new_namespace(self, name: str) -> Namespace:
        _run(["ip", "netns", "add", name])
        self._created.append(name)
        ns = Namespace(name, on_spawn=self._track)
        ns.run(["sysctl", "-q", "-w", *_QUIET_SYSCTLS])
        ns.run(["ip", "link", "set", "lo", "up"])
        return ns

    def _add(self, spec: HostSpec) -> Namespace:
        switch = self.switch
        if spec.name in self._hosts:
            raise LabError(f"lab {self.prefix} already has a host {spec.name!r}")
        port = f"{self.prefix}v{len(self._hosts)}"
        ns = self._new_namespace(f"{self.prefix}-{spec.name}")
        peer = ["peer", "name", HOST_IFACE]
        if spec.mac is not None:
            peer += ["address", spec.mac]
        switch.run(["ip", "link", "add", port, "type", "veth", *peer, "netns", ns.name])
        switch.run(["ip", "link", "set", port, "master", BRIDGE])
        switch.run(["ip", "link", "set", port, "up"])
        if spec.address is not None:
            ns.run(["ip", "addr", "add", spec.address.with_prefixlen, "dev", HOST_IFACE])
        ns.run(["ip", "link", "set", HOST_IFACE, "up"])
        self._hosts[spec.name] = ns
        self._macs[spec.name] = _link_mac(ns, HOST_IFACE)
        log.debug("lab %s: host %s mac=%s", self.prefix, spec.name, self._macs[spec.name])
        return ns


def _link_mac(ns: Namespace, iface: str) -> str:
    done = ns.run(["ip", "-j", "link", "show", "dev", iface])
    links: list[dict[str, object]] = json.loads(done.stdout)
    return str(links[0]["address"])


def pid_alive(pid: int | None) -> bool:
    """Is ``pid`` a running process? A zombie (a child that ended, not yet reaped) is not."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def spawn_detached(ns: Namespace, argv: Sequence[str], log: Path) -> int:
    """Start a detached process in ``ns`` (it outlives this command, its output appended
    to ``log``); its PID, for whoever ends it later (:func:`stop_pid`)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ns.argv(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def stop_pid(pid: int, grace: float = 5.0) -> None:
    """SIGTERM a process :func:`spawn_detached` started, SIGKILL after ``grace`` s."""
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
