"""Lab nodes as systemd-nspawn containers: the shared image, booted in about a second.

A container node runs the *same* root filesystem as a VM node booted with the shared
image (``root.squashfs`` of an image version in the store), with real systemd, networkd,
sshd and the same agent. It skips only the firmware steps (DHCP/TFTP/iPXE and the kernel
download); from the boot script on, it takes the appliance's path::

    unpack_root(store/<ref>, <lab>/rootfs)        unsquashfs once per squashfs sha256
    for each ContainerSpec (ctr1, 52:54:00:98:00:01, ...):
        netns <prefix>-c<i>; veth <prefix>c<i> (on br0 in <prefix>-sw) <-> host0 (the MAC)
        script_for(mac)     GET /boot/<mac>.ipxe as iPXE would: a fresh per-boot token
                            and a ``script`` event on the node's timeline
        parse_boot_script   the kernel line's provisioner.* words -> PID 1's arguments
        systemd-nspawn --boot ... --directory=<root> provisioner.url=... provisioner.mac=...
                            provisioner.token=...   in a cgroup of its own
    inside: networkd takes a lease from the appliance's DHCP server on host0,
        provisioner-keys.service installs the control node's key (``keys`` event) and
        provisioner-agent.service reports (``inventory`` event): the node is ``ready``.

There is no kernel command line in a container: systemd reads its conditions
(``ConditionKernelCommandLine=provisioner.url``) from PID 1's arguments, and the agent
reads ``/proc/1/cmdline`` when that carries ``provisioner.url=``.

API (what ``provisioner lab up --kind container`` calls)::

    specs = container_specs(16)                       # ctr1..ctr16, 52:54:00:98:00:01..
    root = unpack_root(store.get(ref).path, lab_dir / "rootfs", progress)
    started = start_containers(prefix, switch_ns, specs, root,
                               lambda mac: fetch_script(prov_ns, base_url, mac),
                               progress, lab_dir / "containers")
    ... Started.as_dict() into lab.json; steps_reached(registry.events(mac)) ...
    stop_containers([Started.from_dict(d) for d in saved], progress)

``stop_containers`` ends each ``systemd-nspawn`` by PID (SIGTERM: an orderly shutdown of
the container; SIGKILL after a grace period), then whatever is still in the node's
namespace, deletes the namespace (its veth pair goes with it) and the node's cgroups.
``netns.cleanup(prefix)`` also finds the node namespaces, as they share the lab's prefix
(but not the cgroups: call ``stop_containers`` first). ``wait_ready`` follows the nodes'
timelines to ``ready`` (what ``lab up`` shows; ``steps_reached`` is its pure core).

What a container shows and what it does not (checked here, see issue 8, item 7):

* It runs in a cgroup of its own, in name=systemd and in the unified hierarchy (a shared
  one breaks units with status=219/CGROUP). Without systemd as the host's PID 1 (this
  project's machines) the cgroups are made by hand; with it, ``systemd-run --scope``.
* nspawn runs inside the node's namespace (``nsenter --net``) *and* is given it
  (``--network-namespace-path``): given it only, the container's /sys is the host's and
  the agent reports the host's NICs instead of host0; ``ip netns exec`` remounts /sys.
* The host's PCI devices are hidden; DMI, CPU, memory and the kernel are the host's. No
  rule of the profile language tells a container from its host, so a container node
  fingerprints as ``generic-cpu`` (auto-enrolled like any matched node).
* Past ~20 nodes ``fs.inotify.max_user_instances`` must grow (each systemd takes some).

The pure parts (specs, script parsing, argv builders, steps) take plain data; the I/O is
in ``unpack_root``, ``fetch_script``, ``start_containers``, ``stop_containers`` and
``wait_ready``.
Errors: :class:`ContainerError`, a :class:`~provisioner.lab.netns.LabError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from provisioner.image import ImageError
from provisioner.image.store import ImageStore
from provisioner.lab.cgroups import (
    cgroup_dirs,
    cgroup_roots,
    in_cgroups_argv,
    inotify_needed,
    scope_argv,
)
from provisioner.lab.netns import (
    BRIDGE,
    CommandError,
    LabError,
    Namespace,
    _run,
    list_namespaces,
    pid_alive,
)
from provisioner.records import Event, EventKind
from provisioner.registry import Registry

log = logging.getLogger(__name__)

NSPAWN = "systemd-nspawn"
NODE_IFACE = "host0"  # what nspawn itself names a container's veth end
MAC_PREFIX = "52:54:00:98:00"  # VMs are 52:54:00:99:00:<i>
MAX_NODES = 255
NETNS_DIR = Path("/run/netns")
PCI_DEVICES = "/sys/bus/pci/devices"  # hidden in containers: the host's, not theirs
CGROUP_MOUNTS = Path("/proc/self/mounts")
SYSTEMD_BOOTED = Path("/run/systemd/system")  # sd_booted(): systemd is PID 1
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
START_WORKERS = 4
STOP_GRACE = 10.0  # an orderly container shutdown takes ~1-2 s
SCRIPT_TIMEOUT = 15.0
READY_MARK = ".unpacked"  # written last in a rootfs cache folder: the unpack finished
CONTAINER_STEPS = ("script", "keys", "ready")

# The nspawn processes this process started and has not yet seen end (by PID).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

Progress = Callable[[str], None]


class ContainerError(LabError):
    """A container node could not be prepared, started or stopped."""


# ------------------------------------------------------------------- pure: what to start


@dataclass(frozen=True)
class ContainerSpec:
    """One container node: its name (the container's hostname), MAC and index."""

    name: str
    mac: str
    index: int

    def netns(self, prefix: str) -> str:
        return f"{prefix}-c{self.index}"

    def port(self, prefix: str) -> str:
        """The veth end on the bridge (at most 15 characters: prefix + c + index)."""
        return f"{prefix}c{self.index}"


def container_specs(count: int, *, first: int = 1) -> list[ContainerSpec]:
    """``count`` nodes ``ctr<i>`` with MACs ``52:54:00:98:00:<i>`` (i from ``first``)."""
    last = first + count - 1
    if count < 0 or first < 1 or last > MAX_NODES:
        raise ContainerError(f"container nodes {first}..{last}: indexes must be 1..{MAX_NODES}")
    return [ContainerSpec(f"ctr{i}", f"{MAC_PREFIX}:{i:02x}", i) for i in range(first, last + 1)]


@dataclass(frozen=True)
class BootArgs:
    """The ``provisioner.*`` words of a boot script's kernel line, in their order."""

    words: tuple[str, ...]

    def value(self, key: str) -> str | None:
        found = None
        for word in self.words:
            name, _, value = word.partition("=")
            if name == key:
                found = value
        return found

    @property
    def url(self) -> str:
        return self.value("provisioner.url") or ""

    @property
    def mac(self) -> str:
        return self.value("provisioner.mac") or ""

    @property
    def token(self) -> str:
        return self.value("provisioner.token") or ""


def parse_boot_script(script: str) -> BootArgs:
    """A node's iPXE script -> the provisioner.* arguments its kernel line carries.

    Only ``provisioner.*`` words are kept: the others (``initrd=``, ``boot=live``,
    ``fetch=``, ``console=``) are for a kernel and an initramfs a container has not got,
    and a bare word such as ``single`` or ``3`` would change what systemd boots.
    """
    for line in script.splitlines():
        words = line.split()
        if not words or words[0] != "kernel":
            continue
        kept = tuple(w for w in words[2:] if w.startswith("provisioner.") and "=" in w)
        args = BootArgs(kept)
        missing = [k for k in ("url", "mac", "token") if not args.value(f"provisioner.{k}")]
        if missing:
            raise ContainerError(f"boot script's kernel line lacks provisioner.{missing[0]}=")
        return args
    first = next((ln for ln in script.splitlines() if ln.startswith("# ")), script[:80])
    raise ContainerError(f"boot script has no kernel line to take arguments from: {first}")


_IMAGE_IN_URL = re.compile(r"/images/([^/?#\s]+)/")


def image_of_script(script: str) -> str | None:
    """The image (``name@version``) whose kernel a boot script's kernel line fetches: the
    root a container node boots, as a VM's initramfs fetches that image's squashfs."""
    for line in script.splitlines():
        words = line.split()
        if len(words) > 1 and words[0] == "kernel":  # its first word not an option: the URL
            url = next((w for w in words[1:] if not w.startswith("--")), "")
            found = _IMAGE_IN_URL.search(url)
            return found.group(1) if found else None
    return None


def rootfs_dir(cache: Path, squashfs_sha256: str) -> Path:
    """Where a squashfs is unpacked: one folder per content, shared by all nodes."""
    return cache / squashfs_sha256[:16]


def unsquashfs_argv(squashfs: Path, target: Path) -> list[str]:
    return ["unsquashfs", "-no-progress", "-quiet", "-dest", str(target), str(squashfs)]


def veth_argv(prefix: str, spec: ContainerSpec) -> list[list[str]]:
    """The commands, run in the switch namespace, that plug the node into the bridge."""
    port = spec.port(prefix)
    return [
        ["ip", "link", "add", port, "type", "veth", "peer", "name", NODE_IFACE,
         "address", spec.mac, "netns", spec.netns(prefix)],
        ["ip", "link", "set", port, "master", BRIDGE],
        ["ip", "link", "set", port, "up"],
    ]  # fmt: skip


def nspawn_argv(spec: ContainerSpec, rootfs: Path, netns: Path, args: BootArgs) -> list[str]:
    """systemd-nspawn booting ``rootfs`` in namespace ``netns``; ``args`` go to PID 1.

    nspawn itself runs in the node's namespace (``nsenter --net``, which execs: same
    PID) as well as being told to use it: with ``--network-namespace-path`` alone, the
    container's /sys is the host's sysfs, and the agent would report the host's NICs.
    The host's PCI devices are hidden (an empty tmpfs on /sys/bus/pci/devices): a
    container has none of its own, and a host's GPU must not make its container nodes
    match that GPU's profile (and get its drivers installed by post-install).
    """
    return [
        "nsenter",
        f"--net={netns}",
        NSPAWN,
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--network-namespace-path={netns}",
        "--capability=CAP_NET_ADMIN",
        "--volatile=overlay",
        "--link-journal=no",
        "--resolv-conf=off",
        "--timezone=off",
        "--console=read-only",
        f"--tmpfs={PCI_DEVICES}:mode=0755",
        f"--directory={rootfs}",
        f"--machine={netns.name}",  # unique on this host, as the namespace is
        f"--hostname={spec.name}",
        *args.words,
    ]


@dataclass(frozen=True)
class Started:
    """A container node as started: what ``stop_containers`` needs to end it."""

    name: str
    mac: str
    netns: str
    pid: int  # its boot loop's (container_boot), which runs systemd-nspawn
    cgroups: tuple[str, ...]  # made by hand (empty under a systemd scope)
    console: str  # the container's console output
    started_at: float  # time.time() when nspawn was started

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Started:
        return cls(**{**data, "cgroups": tuple(data.get("cgroups", ()))})


def steps_reached(events: Iterable[Event]) -> list[str]:
    """A container node's steps in its latest boot: ``script``, ``keys``, ``ready``.

    The latest ``script`` event starts the boot (a container fetches one per start);
    ``keys`` is the control node's key fetched and ``ready`` the image agent's report,
    both after that script.
    """
    seen: set[str] = set()
    for e in events:
        if e.kind is EventKind.SCRIPT:
            seen = {"script"}
        elif e.kind is EventKind.KEYS and seen:
            seen.add("keys")
        elif e.kind is EventKind.INVENTORY and seen:
            seen.add("ready")
    return [s for s in CONTAINER_STEPS if s in seen]


def is_ready(events: Iterable[Event]) -> bool:
    return steps_reached(events) == list(CONTAINER_STEPS)


# ------------------------------------------------------------------- I/O: the root


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack_root(image: Path, cache: Path, progress: Progress) -> Path:
    """Unpack an image version's ``root.squashfs`` (from the store folder ``image``) into
    ``cache/<sha256[:16]>/`` once; later calls return that folder at once.

    The squashfs is read from the store on this machine (the appliance serves the same
    file): checked against the manifest's sha256, unpacked into a temporary folder and
    renamed into place, so a half-unpacked root is never used. Nodes never write to it
    (``--volatile=overlay``).
    """
    try:
        manifest = json.loads((image / "manifest.json").read_text())
        expected = str(manifest["squashfs"]["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ContainerError(f"{image}: not a rootfs image with a squashfs ({exc})") from exc
    target = rootfs_dir(cache, expected)
    if (target / READY_MARK).exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # One unpack per root, whoever asks: nodes start in threads, and several boot loops
    # (processes) may reboot onto a new image at once. flock serializes both.
    with open(cache / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / READY_MARK).exists():
            return target
        return _unpack(image, expected, target, progress)


def _unpack(image: Path, expected: str, target: Path, progress: Progress) -> Path:
    cache = target.parent
    squashfs = image / "root.squashfs"
    if not squashfs.is_file():
        raise ContainerError(f"{squashfs} is missing")
    if shutil.which("unsquashfs") is None:
        raise ContainerError("unsquashfs is missing: apt-get install squashfs-tools")
    started = time.monotonic()
    actual = _sha256(squashfs)
    if actual != expected:
        raise ContainerError(f"{squashfs}: sha256 {actual}, the manifest says {expected}")
    work = cache / f".{target.name}.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    try:
        _run(unsquashfs_argv(squashfs, work), timeout=600)
        (work / READY_MARK).write_text(f"{expected}\n")
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    progress(f"root of {image.name} unpacked in {time.monotonic() - started:.1f} s: {target}")
    return target


# ------------------------------------------------------------------- I/O: the nodes


def fetch_script(prov: Namespace, base_url: str, mac: str) -> str:
    """GET ``<base>/boot/<mac>.ipxe`` from the appliance's namespace, as iPXE would."""
    url = f"{base_url.rstrip('/')}/boot/{mac}.ipxe"
    # The header: this request is made for the node, which has no DHCP lease yet. serve
    # takes it only from the appliance itself (loopback or its own address): run in the
    # appliance's namespace, curl to the appliance's address connects from that address.
    # The token is then bound to the first address that uses it: the container's.
    header = "X-Provisioner-On-Behalf: lab"
    argv = ["curl", "-fsS", "-H", header, "--max-time", str(int(SCRIPT_TIMEOUT)), url]
    done = prov.run(argv, check=False)
    if done.returncode != 0:
        raise ContainerError(f"GET {url} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def raise_inotify_limit(nodes: int, path: Path = INOTIFY_INSTANCES) -> int | None:
    """Grow ``fs.inotify.max_user_instances`` for ``nodes`` containers (never shrink it)."""
    current = int(path.read_text().split()[0])
    wanted = inotify_needed(nodes, current)
    if wanted is not None:
        path.write_text(f"{wanted}\n")
        log.info("fs.inotify.max_user_instances %d -> %d for %d containers", current, wanted, nodes)
    return wanted


def _plug(prefix: str, switch: Namespace, spec: ContainerSpec) -> None:
    name = spec.netns(prefix)
    _run(["ip", "netns", "add", name])
    try:
        for argv in veth_argv(prefix, spec):
            switch.run(argv)
    except BaseException:
        _run(["ip", "netns", "delete", name], check=False)
        raise


@dataclass(frozen=True)
class Booter:
    """What a container node's "firmware" needs at each boot: where to fetch its boot
    script (the appliance's namespace and URL) and the images its scripts name (the
    store, unpacked once per squashfs into ``cache``). A script that names an image
    without a root (discovery: an initramfs a container cannot run) boots ``fallback``
    instead, the lab's image, whose agent reports the same way."""

    prov: str  # the appliance's namespace
    base_url: str
    store: Path  # the image store
    cache: Path  # unpacked roots
    fallback: str  # the lab's image (name or name@version)

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Booter:
        return cls(
            data["prov"], data["base_url"], Path(data["store"]), Path(data["cache"]),
            data["fallback"],
        )  # fmt: skip

    def boot(self, mac: str, progress: Progress) -> tuple[Path, BootArgs]:
        """A fresh boot script for ``mac``: the root of the image it names, its arguments."""
        script = fetch_script(Namespace(self.prov), self.base_url, mac)
        args = parse_boot_script(script)
        ref = image_of_script(script)
        if ref is None:
            raise ContainerError(f"{mac}: its boot script names no image to boot")
        store = ImageStore(self.store)
        try:
            image = store.get(ref)
            if image.squashfs is None:
                image = store.get(self.fallback)
        except ImageError as exc:
            raise ContainerError(f"{mac}: {exc}") from exc
        return unpack_root(image.path, self.cache, progress), args


def _launch(
    prefix: str,
    spec: ContainerSpec,
    booter: Booter,
    first: tuple[Path, BootArgs],
    workdir: Path,
    disk: str | None,
) -> Started:
    """Start the node's boot loop (:mod:`provisioner.lab.container_boot`) on its first
    boot's root and arguments, in the node's cgroups (or a scope); ``disk``, a loop
    device, is its disk."""
    name = spec.netns(prefix)
    rootfs, args = first
    plan = {
        "spec": asdict(spec),
        "netns": str(NETNS_DIR / name),
        "booter": booter.as_dict(),
        "root": str(rootfs),
        "words": list(args.words),
        "disk": disk,
    }
    argv = [sys.executable, "-m", "provisioner.lab.container_boot", json.dumps(plan)]
    cgroups: list[Path] = []
    if SYSTEMD_BOOTED.is_dir():
        argv = scope_argv(f"{name}.scope", argv)
    else:
        cgroups = cgroup_dirs(cgroup_roots(CGROUP_MOUNTS.read_text()), name)
        for path in cgroups:
            path.mkdir(exist_ok=True)
        argv = in_cgroups_argv(cgroups, argv)
    console = workdir / f"{spec.name}.console.log"
    with open(console, "ab") as out:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives `lab up`; `lab down` ends it by PID
            )
        except OSError as exc:
            raise CommandError(argv, None, str(exc)) from exc
    _CHILDREN[proc.pid] = proc  # kept, so that it is reaped (not warned about) when it ends
    log.debug("container %s pid=%d mac=%s argv=%s", spec.name, proc.pid, spec.mac, argv)
    return Started(
        spec.name,
        spec.mac,
        name,
        proc.pid,
        tuple(str(p) for p in cgroups),
        str(console),
        time.time(),
    )


def start_containers(
    prefix: str,
    switch: Namespace,
    nodes: Sequence[ContainerSpec],
    booter: Booter,
    progress: Progress,
    workdir: Path,
    disks: Mapping[str, str] | None = None,
    shape: Callable[[str], None] | None = None,
) -> list[Started]:
    """Start ``nodes`` on the lab bridge; return them as started. ``disks``: a node's
    disk (a loop device, :mod:`provisioner.lab.loopdisk`) by node name; ``shape``: called
    with each node's port on the bridge once it is there, before the node starts
    (faults on the bridge: :mod:`provisioner.lab.netem`).

    For each node: its namespace and veth, then its boot script (fetched from the
    appliance), the root of the image it names and its boot loop (``systemd-nspawn``
    again at each reboot, on a fresh script). The caller records the result
    (``Started.as_dict``); on an error, what was started so far is stopped again.
    """
    if shutil.which(NSPAWN) is None:
        raise ContainerError(f"{NSPAWN} is missing: apt-get install systemd-container")
    workdir.mkdir(parents=True, exist_ok=True)
    raise_inotify_limit(len(nodes))

    def start_one(spec: ContainerSpec) -> Started:
        _plug(prefix, switch, spec)
        try:
            if shape is not None:
                shape(spec.port(prefix))
            rootfs, args = booter.boot(spec.mac, progress)
            if not (rootfs / "usr" / "lib" / "systemd" / "systemd").exists():
                raise ContainerError(f"{rootfs} is not a root with systemd")
            disk = (disks or {}).get(spec.name)
            node = _launch(prefix, spec, booter, (rootfs, args), workdir, disk)
        except BaseException:
            _run(["ip", "netns", "delete", spec.netns(prefix)], check=False)
            raise
        progress(f"{spec.name} ({spec.mac}) started: systemd-nspawn pid {node.pid}")
        return node

    # A few at a time: each start runs ~6 short commands (ip, curl in the appliance's
    # namespace); one after the other they took 0.25 s a node here.
    started: list[Started] = []
    failures: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=START_WORKERS) as pool:
        for future in [pool.submit(start_one, spec) for spec in nodes]:
            try:
                started.append(future.result())
            except BaseException as exc:  # collected: the others are stopped first
                failures.append(exc)
    if failures:
        stop_containers(started, progress)
        raise failures[0]
    return started


def _alive(pid: int) -> bool:
    """Is ``pid`` running? (A child of this process that ended is reaped: gone.)"""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    return pid_alive(pid)


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: Iterable[int], seconds: float) -> list[int]:
    """Wait up to ``seconds`` for ``pids`` to end; those still running."""
    live = [p for p in pids if _alive(p)]
    deadline = time.monotonic() + seconds
    while live and time.monotonic() < deadline:
        time.sleep(0.1)
        live = [p for p in live if _alive(p)]
    return live


def _remove_cgroup(path: Path) -> None:
    """rmdir a cgroup and the sub-cgroups systemd made in it, deepest first."""
    if not path.is_dir():
        return
    subdirs = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for sub in [*subdirs, path]:
        try:
            sub.rmdir()
        except OSError as exc:
            log.warning("cgroup %s not removed: %s", sub, exc)


def stop_containers(
    started: Sequence[Started], progress: Progress, *, grace: float = STOP_GRACE
) -> None:
    """End the nodes (SIGTERM to nspawn: an orderly shutdown; SIGKILL after ``grace``),
    then what is left in their namespaces; delete namespaces and cgroups. Idempotent."""
    pids = [s.pid for s in started if _alive(s.pid)]
    _signal(pids, signal.SIGTERM)
    stubborn = _wait_gone(pids, grace)
    if stubborn:
        log.warning("systemd-nspawn pids %s ignored SIGTERM for %.0f s: SIGKILL", stubborn, grace)
        _signal(stubborn, signal.SIGKILL)
        _wait_gone(stubborn, grace)
    existing = set(list_namespaces())
    for node in started:
        if node.netns in existing:
            left = Namespace(node.netns).pids()
            _signal(left, signal.SIGKILL)
            _wait_gone(left, grace)
            _run(["ip", "netns", "delete", node.netns], check=False)
        for cgroup in node.cgroups:
            _remove_cgroup(Path(cgroup))
    if started:
        progress(f"stopped {len(started)} container node(s)")


def wait_ready(
    registry: Registry, started: Sequence[Started], progress: Progress, timeout: float
) -> dict[str, float]:
    """Follow the nodes' timelines until each is ``ready`` or ``timeout`` passes; for each
    ready node, seconds from its start to its report. Shows each step as it comes."""
    shown: dict[str, list[str]] = {s.name: [] for s in started}
    ready: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while True:
        for node in started:
            events = registry.events(node.mac)
            for step in steps_reached(events):
                if step not in shown[node.name]:
                    shown[node.name].append(step)
                    progress(f"{node.name:9} {step}")
            if node.name not in ready and is_ready(events):
                report = [e.ts for e in events if e.kind is EventKind.INVENTORY][-1]
                ready[node.name] = report - node.started_at
        if len(ready) == len(started) or time.monotonic() > deadline:
            return ready
        time.sleep(0.25)
