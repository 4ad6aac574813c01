"""The virtual lab: `provisioner lab up | status | down`.

`up` builds what is missing (the discovery image), makes an isolated network (a switch
namespace with a bridge, the appliance in its own namespace, in proxy mode dnsmasq as the
site DHCP server), starts `provisioner serve` there and powers on N QEMU VMs whose only
boot device is the network, then follows each node through DHCP, TFTP, iPXE, its script,
kernel, initrd and inventory. Everything it starts is recorded in ``lab.json``; `down`
ends those processes by PID and deletes the lab's namespaces (with them its bridge,
veths and taps) and this machine's leg on it, and nothing else.

The machine itself is on the lab's network too: `up` gives it a leg into the
appliance's namespace (``<prefix>h0``, the segment's ``host_leg``, see :mod:`.netns`),
which forwards its connections onto the bridge as the control node's (its ``server``), so that
``ssh``, ``curl`` and the ``provisioner`` commands typed here (post-install, smoke, the
gateway) reach the nodes the way an operator expects, through the nodes' firewalls, and
a packet for a lab address never takes the machine's default route while the lab is up.
The leg's only route is the lab's subnet via the appliance on that link: it goes with
the link when `down` (or :func:`.netns.cleanup`) deletes the lab, so no route of the
lab outlives it. Once the lab is down, a node's
address is an address like any other here; ``Site.connect`` then refuses to open SSH to
an address of the cluster subnet that this machine would reach from outside it. If the
machine already routes the lab's subnet more specifically than by its default route (a
site network, another lab's leg), `up` adds no leg and says so: use `lab exec`.

The lab's state directory (registry, image store) is kept, so `provisioner node list`
still answers and the next `up` needs no rebuild.

Its subnet (default 10.99.0.0/24), its nodes' first number and its registry come from
:mod:`.segment`: two labs with different subnets and node numbers, writing to one
PostgreSQL registry, are two segments of one site (docs/scale.md).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from provisioner.config import Mode, write_config
from provisioner.data import DISCOVERY_RECIPE
from provisioner.enroll.power_cycle import start
from provisioner.image.discovery import build_discovery, default_cache
from provisioner.image.discovery import load_recipe as load_discovery_recipe
from provisioner.image.rootfs import build_rootfs
from provisioner.image.store import ImageRef, ImageStore
from provisioner.lab import containers, loopdisk
from provisioner.lab.containers import Started, stop_containers
from provisioner.lab.containers import steps_reached as container_steps
from provisioner.lab.lab_config import HTTP_PORT, lab_config, site_dhcp_argv
from provisioner.lab.netem import Netem, port_shaper, set_faults
from provisioner.lab.netns import (
    HostSpec,
    LabError,
    LabNetwork,
    Namespace,
    cleanup,
    host_routes,
    list_namespaces,
    overlapping_routes,
    pid_alive,
    remove_orphan_legs,
    spawn_detached,
    stop_pid,
)
from provisioner.lab.segment import Segment, node_numbers
from provisioner.lab.state import LabNode, LabState
from provisioner.lab.vm import VmSpec, console_tail, prepare, probe_accel, qemu_argv
from provisioner.power import PowerError, PowerState, open_driver
from provisioner.registry import Registry
from provisioner.states import NodeState
from provisioner.timeline import steps_reached

DEFAULT_LAB_DIR = Path(os.environ.get("PROVISIONER_LAB_DIR", "/var/lib/provisioner-lab"))
# After its report a lab VM powers off, unless the appliance answers "next": "reboot"
# (the node was enrolled and its image is built: it boots that now).
IMAGE_MEMORY_MIB = 1536  # a RAM-held root: the squashfs + the unpacked initrd + the system
STUCK_SECONDS = 180.0

Progress = Callable[[str], None]


# ---------------------------------------------------------------- pure: where is a node


@dataclass(frozen=True)
class NodeStatus:
    name: str
    mac: str
    firmware: str
    state: str
    steps: list[str]
    last_step: str | None
    idle_seconds: float | None
    vm_running: bool
    verdict: str  # discovered | booting | stuck | failed

    def line(self) -> str:
        last = self.last_step or "nothing yet"
        idle = f", {self.idle_seconds:.0f}s ago" if self.idle_seconds is not None else ""
        vm = "running" if self.vm_running else "off"
        return (
            f"{self.name:9} {self.mac}  {self.firmware:4}  {self.verdict:10} "
            f"state={self.state}  last step: {last}{idle}  ({vm})"
        )


def judge(
    state: str,
    steps: list[str],
    idle: float | None,
    running: bool,
    age: float,
    stuck_after: float = STUCK_SECONDS,
    target: str = "discovered",
) -> str:
    if "ready" in steps:
        return "ready"
    if state == NodeState.FAILED.value:  # e.g. its root was not the published one
        return "failed"
    if target == "discovered" and (state == NodeState.DISCOVERED.value or "inventory" in steps):
        return "discovered"
    if not running:
        return "failed"
    if (idle if idle is not None else age) > stuck_after:
        return "stuck"
    return "booting"


# ---------------------------------------------------------------- processes


def _power_url(spec: VmSpec) -> str:
    """The VM's power settings: its QMP socket, driven like any node's BMC."""
    return f"qemu://{spec.qmp}"


def _powered_on(spec: VmSpec) -> bool:
    """Whether the VM's guest runs (its power driver says on): off once it powered
    itself off, or when its QEMU does not answer."""

    try:
        return open_driver(_power_url(spec), node=spec.name, timeout=2).status() is PowerState.ON
    except PowerError:
        return False


def _alive(pid: int | None) -> bool:
    return pid_alive(pid)


# ---------------------------------------------------------------- up / status / down


def ensure_discovery_image(image_dir: Path, progress: Progress) -> None:
    """Build the discovery image when the lab has none, or when the one it has was built
    from another recipe (a provisioner upgrade: e.g. netconsole's module in its initrd)."""
    current = image_dir / "discovery"
    if (current / "vmlinuz").exists() and (current / "initrd").exists():
        try:
            built = json.loads((current / "manifest.json").read_text()).get("recipe_sha256")
        except (OSError, ValueError):
            built = None
        if built == load_discovery_recipe(DISCOVERY_RECIPE).sha256:
            return
        progress("the discovery recipe changed since the lab's image was built: rebuilding")
    else:
        progress("building the discovery image (first time: downloads Debian's kernel)")
    build_discovery(DISCOVERY_RECIPE, image_dir, default_cache(), progress)


def ensure_image(image_dir: Path, image: str, progress: Progress) -> None:
    """Build ``image`` from ``images/<name>.toml`` unless the store has it."""

    ref = ImageRef.parse(image)
    if ImageStore(image_dir).find(ref) is not None:
        return
    recipe = DISCOVERY_RECIPE.parent / f"{ref.name}.toml"
    if ref.version is not None or not recipe.is_file():
        raise LabError(f"no image {image} in {image_dir} and no recipe {recipe} to build it")

    progress(f"building the {ref.name} image (mmdebstrap; a few minutes the first time)")
    build_rootfs(recipe, image_dir, default_cache(), progress)


def up(
    directory: Path,
    *,
    nodes: int,
    firmware: str,
    mode: Mode,
    memory_mib: int,
    accel: str,
    progress: Progress,
    timeout: float,
    appliance: bool = True,
    image: str | None = None,
    kind: str = "vm",
    disk: int = 0,  # GiB of disk per container node; 0: none
    profiles: Path | None = None,
    netem: Netem | None = None,  # faults on the bridge from the start (lab/netem.py)
    segment: Segment | None = None,  # its subnet (default 10.99.0.0/24)
    first_node: int = 1,  # its nodes' first number (names and MACs)
    registry_url: str | None = None,  # a shared PostgreSQL registry (lab/segment.py)
) -> LabState:
    segment = segment or Segment.parse()
    numbers = node_numbers(first_node, nodes)
    existing = LabState.load(directory)
    if existing is not None and any(n.startswith(existing.prefix) for n in list_namespaces()):
        raise LabError(f"a lab is already up ({existing.prefix}): run `provisioner lab down`")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vms").mkdir(exist_ok=True)
    state_dir = directory / "state"
    # Container nodes boot the image itself, but their first script (they are enrolling)
    # is the discovery one: its kernel line carries their provisioner.* arguments.
    ensure_discovery_image(state_dir / "images", progress)
    if image is not None:
        ensure_image(state_dir / "images", image, progress)
    for stale in state_dir.glob("registry.sqlite3*"):
        stale.unlink()  # a new lab: a fresh registry (images are kept)

    hosts = [HostSpec("prov", segment.interface(segment.server))]
    if mode is Mode.PROXY:
        hosts.append(HostSpec("site", segment.interface(segment.site)))
    net = LabNetwork(hosts)
    net.open()  # not closed on return: `lab down` removes it
    if accel == "auto" and kind == "vm":
        accel, why = probe_accel(directory / "vms")
        progress(f"accelerator: {accel} ({why})")
    lab = LabState(
        net.prefix, mode.value, str(directory), time.time(), accel, memory_mib, image=image,
        kind=kind, profiles=None if profiles is None else str(profiles.resolve()),
        subnet=str(segment.network), first_node=first_node, registry_url=registry_url,
    )  # fmt: skip
    lab.save()
    try:
        lab.host_leg = attach_this_machine(net, segment, progress)
        lab.save()
        if netem is not None:
            set_faults(lab, netem, progress)
        shape = port_shaper(lab)
        if kind == "container":
            _containers_up(lab, net, nodes, mode, appliance, progress, disk=disk)
            watch(lab, progress, timeout)
            return lab
        for i in numbers:
            fw = firmware if firmware != "mixed" else ("bios" if i % 2 else "uefi")
            tap = f"{net.prefix}t{i}"
            net.switch.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
            net.switch.run(["ip", "link", "set", tap, "master", "br0", "up"])
            if shape is not None:
                shape(tap)
            lab.nodes.append(LabNode(f"labnode{i}", f"52:54:00:99:00:{i:02x}", fw, tap))
        write_config(lab.config, lab_config(mode, state_dir, image, lab.profiles, lab))
        lab.save()
        if mode is Mode.PROXY:
            lab.pids["site-dhcp"] = spawn_detached(
                net.host("site"),
                site_dhcp_argv(str(segment.dhcp_first), str(segment.dhcp_last), directory,
                               netmask=str(segment.network.netmask)),
                directory / "site-dhcp.log",
            )  # fmt: skip
            progress(f"site DHCP server (dnsmasq) on {segment.site}: addresses only")
        if appliance:
            # IPv6 on the appliance's NIC: it answers iPXE's router solicitations.
            net.host("prov").run(["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"])
            _start_appliance(lab, net.host("prov"), directory, progress)
        lab.save()
        for node in lab.nodes:
            spec = lab.vm(node)
            prepare(spec)
            qemu_log = spec.workdir / f"{node.name}.qemu.log"
            node.pid = spawn_detached(net.switch, qemu_argv(spec), qemu_log)
        lab.save()
        _enroll(lab, progress)
    except BaseException:
        down(directory, progress)
        raise
    watch(lab, progress, timeout)
    return lab


def attach_this_machine(net: LabNetwork, segment: Segment, progress: Progress) -> str | None:
    """Give this machine a leg on the lab's bridge at the segment's ``host_leg``, unless
    it routes the lab's subnet already (then: none, and a line saying why); the leg's
    name. The leg's route is the subnet's own: more specific than a default route, so
    nothing for the lab leaves by the machine's way out while the lab is up."""
    subnet = segment.network
    for orphan in remove_orphan_legs():
        progress(f"removed {orphan}: the leg of a lab that is gone (its namespaces were)")
    taken = overlapping_routes(host_routes(), subnet)
    if taken:
        progress(
            f"this machine routes {subnet} already ({'; '.join(taken)}): no leg on the lab, "
            "commands typed here do not reach its nodes (use `provisioner lab exec`)"
        )
        return None
    leg = net.attach_host("prov", segment.interface(segment.host_leg))
    progress(
        f"this machine on the lab: {segment.host_leg} on {leg}, through the appliance (nodes"
        f" see {segment.server}): ssh, curl and provisioner commands typed here reach them"
    )
    return leg


def _containers_up(
    lab: LabState,
    net: LabNetwork,
    count: int,
    mode: Mode,
    appliance: bool,
    progress: Progress,
    *,
    disk: int,
) -> None:
    """Container nodes (systemd-nspawn) booting the shared image on the lab bridge: no
    firmware steps; from their boot script on, the same path as a VM's. With ``disk``,
    each has a disk of its own (a loop device, :mod:`provisioner.lab.loopdisk`)."""

    if not appliance or lab.image is None:
        raise LabError("container nodes need the appliance and an image (--image NAME)")
    directory = Path(lab.directory)
    specs = containers.container_specs(count, first=lab.first_node)
    for spec in specs:
        lab.nodes.append(LabNode(spec.name, spec.mac, "container", spec.port(lab.prefix)))
    write_config(lab.config, lab_config(mode, lab.state_dir, lab.image, lab.profiles, lab))
    if disk:
        for spec in specs:
            lab.disks[spec.name] = loopdisk.attach(_disk_file(lab, spec.name), disk << 30)
            progress(
                f"{spec.name}: a {disk} GiB disk, {lab.disks[spec.name]}"
                f" (/dev/disk/by-id/{loopdisk.disk_id(spec.name)} in the node)"
            )
    lab.save()
    net.host("prov").run(["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"])
    _start_appliance(lab, net.host("prov"), directory, progress)
    registry = Registry(lab.registry)
    try:
        for spec in specs:  # known by MAC and name, enrolled as soon as they report
            registry.touch_node(spec.mac)
            registry.set_hostname(spec.mac, spec.name)
        start(registry, [s.name for s in specs], power_timeout=10,
              progress=lambda line: None, power_cycle=False)  # fmt: skip
    finally:
        registry.close()
    started = containers.start_containers(
        lab.prefix, net.switch, specs, _booter(lab), progress, directory / "containers",
        lab.disks, port_shaper(lab),
    )  # fmt: skip
    lab.containers = [s.as_dict() for s in started]
    by_mac = {s.mac: s for s in started}
    for node in lab.nodes:
        node.pid = by_mac[node.mac].pid
        node.powered_on = by_mac[node.mac].started_at
    lab.save()


def _disk_file(lab: LabState, name: str) -> Path:
    return Path(lab.directory) / "containers" / f"{name}.disk"


def _booter(lab: LabState) -> containers.Booter:
    """How the lab's container nodes boot: each start and reboot fetches its boot script
    from the appliance and unpacks the image that script names (once per squashfs)."""
    return containers.Booter(
        f"{lab.prefix}-prov",
        f"http://{lab.segment.server}:{HTTP_PORT}",
        lab.state_dir / "images",
        Path(lab.directory) / "rootfs",
        lab.image or "",
    )


def _enroll(lab: LabState, progress: Progress) -> None:
    """Register each VM with its QMP socket as its power URL and enroll it by power-cycle:
    the same path as real hardware (`node add ... --power`, `enroll --power-cycle`)."""

    deadline = time.monotonic() + 30
    for node in lab.nodes:
        while not lab.vm(node).qmp.exists():
            if not _alive(node.pid) or time.monotonic() > deadline:
                raise LabError(f"{node.name}: QEMU did not start (see its .qemu.log)")
            time.sleep(0.1)
    registry = Registry(lab.registry)
    try:
        for node in lab.nodes:
            registry.touch_node(node.mac)
            registry.set_hostname(node.mac, node.name)
            registry.set_power(node.mac, _power_url(lab.vm(node)))
        items = start(
            registry,
            [n.name for n in lab.nodes],
            power_timeout=10,
            progress=progress,
        )
    finally:
        registry.close()
    now = time.time()
    for node in lab.nodes:
        node.powered_on = now
    failed = [f"{i.name}: {i.error}" for i in items if i.outcome == "failed"]
    if failed:
        raise LabError("cannot power on lab VMs: " + "; ".join(failed))
    lab.save()


def _start_appliance(lab: LabState, ns: Namespace, directory: Path, progress: Progress) -> None:
    argv = [sys.executable, "-m", "provisioner.cli", "--config", str(lab.config), "serve"]
    lab.pids["serve"] = spawn_detached(ns, argv, directory / "serve.log")
    server = lab.segment.server
    probe = ["curl", "-sf", "-o", "/dev/null", f"http://{server}:{HTTP_PORT}/healthz"]
    deadline = time.monotonic() + 30
    while ns.run(probe, check=False).returncode != 0:
        if not _alive(lab.pids["serve"]) or time.monotonic() > deadline:
            tail = (directory / "serve.log").read_text()[-2000:]
            raise LabError(f"provisioner serve did not start in the lab:\n{tail}")
        time.sleep(0.2)
    progress(f"appliance: provisioner serve ({lab.mode} mode) on {server}")


def status(
    lab: LabState, now: float | None = None, stuck_after: float = STUCK_SECONDS
) -> list[NodeStatus]:
    now = time.time() if now is None else now
    registry = Registry(lab.registry)
    try:
        out = []
        for node in lab.nodes:
            record = registry.node(node.mac)
            events = registry.events(node.mac) if record else []
            if lab.kind == "container":
                steps = container_steps(events)
                running = _alive(node.pid)
            else:
                steps = steps_reached(events)
                running = _alive(node.pid) and _powered_on(lab.vm(node))
            idle = now - events[-1].ts if events else None
            state = record.state.value if record else "unseen"
            out.append(
                NodeStatus(
                    node.name,
                    node.mac,
                    node.firmware,
                    state,
                    steps,
                    steps[-1] if steps else None,
                    idle,
                    running,
                    judge(state, steps, idle, running, now - lab.started, stuck_after, lab.target),
                )
            )
        return out
    finally:
        registry.close()


def watch(lab: LabState, progress: Progress, timeout: float) -> list[NodeStatus]:
    """Show each node's steps as they happen, until all reach the target or fail (or time out)."""
    shown: dict[str, list[str]] = {n.name: [] for n in lab.nodes}
    started = time.monotonic()
    while True:
        current = status(lab)
        for st in current:
            for step in st.steps:
                if step not in shown[st.name]:
                    shown[st.name].append(step)
                    progress(f"{st.name:9} {step}")
        done = all(s.verdict in (lab.target, "failed") for s in current)
        if done or time.monotonic() - started > timeout:
            for st in current:
                if st.verdict != lab.target:
                    progress(f"{st.name}: {st.verdict}, last step {st.last_step or 'none'}")
            return current
        time.sleep(1.0)


def reboot(directory: Path, names: Sequence[str], progress: Progress) -> list[str]:
    """Power-cycle lab nodes, as a person at the rack would: a VM through its power
    driver (QMP: a reset, the firmware boots from the network again), a container node
    stopped and started again on a fresh boot script (a new token; its image's root as
    the image left it: a reboot's clean node). The names rebooted."""
    lab = LabState.load(directory)
    if lab is None:
        raise LabError("no lab is up (provisioner lab up)")
    by_name = {n.name: n for n in lab.nodes}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise LabError(f"no lab node {', '.join(unknown)} (have: {', '.join(by_name)})")
    chosen = [by_name[n] for n in dict.fromkeys(names)]
    if lab.kind != "container":
        for node in chosen:
            open_driver(_power_url(lab.vm(node)), node=node.name, timeout=10).cycle()
            node.powered_on = time.time()
            progress(f"{node.name}: power cycle (QMP reset)")
        lab.save()
        return [n.name for n in chosen]
    running = {d["name"]: Started.from_dict(d) for d in lab.containers}
    stop_containers([running[n.name] for n in chosen if n.name in running], progress)
    switch = Namespace(f"{lab.prefix}-sw")
    for node in chosen:  # its namespace is gone, but the kernel frees the veth lazily
        switch.run(["ip", "link", "del", node.tap], check=False)
    every = containers.container_specs(len(lab.nodes), first=lab.first_node)
    specs = [s for s in every if s.name in names]
    started = containers.start_containers(
        lab.prefix, switch, specs, _booter(lab), progress, directory / "containers",
        lab.disks, port_shaper(lab),
    )  # fmt: skip
    for one in started:
        running[one.name] = one
        by_name[one.name].pid = one.pid
        by_name[one.name].powered_on = one.started_at
    lab.containers = [running[n.name].as_dict() for n in lab.nodes if n.name in running]
    lab.save()
    return [n.name for n in started]


def down(directory: Path, progress: Progress) -> list[str]:
    lab = LabState.load(directory)
    if lab is None:
        progress("no lab is up")
        return []
    if lab.containers:
        stop_containers([Started.from_dict(d) for d in lab.containers], progress)
    for node in lab.nodes:
        if node.pid and lab.kind != "container":
            stop_pid(node.pid)
    for pid in lab.pids.values():
        stop_pid(pid)
    for name in lab.disks:  # after the containers: nothing holds them now
        loopdisk.detach(_disk_file(lab, name))
    removed = cleanup(lab.prefix)
    (directory / "lab.json").unlink()
    progress(f"removed {len(removed)} namespaces of lab {lab.prefix}; processes ended")
    return removed


def vm_consoles(lab: LabState, names: Iterable[str]) -> dict[str, str]:
    if lab.kind == "container":
        consoles = {d["name"]: Path(d["console"]) for d in lab.containers}
        return {
            name: path.read_text(errors="replace")[-3000:] if path.exists() else ""
            for name, path in consoles.items()
            if name in set(names)
        }
    return {n.name: console_tail(lab.vm(n)) for n in lab.nodes if n.name in set(names)}
