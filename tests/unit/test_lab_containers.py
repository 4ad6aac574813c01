"""Container lab nodes, the pure parts: specs, boot-script arguments, argv, steps."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner.discovery.dumps import parse_dump
from provisioner.enroll.fingerprint import fingerprint
from provisioner.lab.cgroups import (
    cgroup_dirs,
    cgroup_roots,
    in_cgroups_argv,
    inotify_needed,
    scope_argv,
)
from provisioner.lab.containers import (
    BootArgs,
    ContainerError,
    ContainerSpec,
    Started,
    container_specs,
    is_ready,
    nspawn_argv,
    parse_boot_script,
    rootfs_dir,
    steps_reached,
    veth_argv,
)
from provisioner.profiles import load_profiles
from provisioner.records import Event, EventKind

MAC = "52:54:00:98:00:01"
BASE = "http://10.99.0.1:8080"

# What bootconf/linux.ipxe.j2 renders for a new node (discovery) and an enrolled one.
DISCOVERY_SCRIPT = f"""#!ipxe
# provisioner boot script for {MAC} (state: new): discovery image "discovery@1"
echo provisioner: {MAC} boots the discovery@1 image (discovery)
kernel {BASE}/images/discovery@1/vmlinuz?mac={MAC} initrd=initrd console=ttyS0,115200n8 \
provisioner.after=reboot provisioner.url={BASE} provisioner.mac={MAC} \
provisioner.token=tok-EN_1 || goto failed
initrd --name initrd {BASE}/images/discovery@1/initrd?mac={MAC} || goto failed
boot || goto failed
"""
IMAGE_SCRIPT = f"""#!ipxe
# provisioner boot script for {MAC} (state: enrolled): image image "debian-bookworm@2"
kernel {BASE}/images/debian-bookworm@2/vmlinuz?mac={MAC} initrd=initrd boot=live \
fetch={BASE}/images/debian-bookworm@2/root.squashfs single 3 provisioner.url={BASE} \
provisioner.mac={MAC} provisioner.token=t2 || goto failed
"""
LOCAL_SCRIPT = f"""#!ipxe
# provisioner boot script for {MAC} (state: local): boot from local disk
echo provisioner: {MAC} boots from its local disk
exit
"""


def test_specs_name_and_mac_each_node_by_its_index() -> None:
    specs = container_specs(3)
    assert [(s.name, s.mac) for s in specs] == [
        ("ctr1", "52:54:00:98:00:01"),
        ("ctr2", "52:54:00:98:00:02"),
        ("ctr3", "52:54:00:98:00:03"),
    ]
    assert container_specs(1, first=16)[0].mac == "52:54:00:98:00:10"
    assert container_specs(0) == []


@pytest.mark.parametrize(("count", "first"), [(256, 1), (1, 0), (2, 255), (-1, 1)])
def test_indexes_outside_one_octet_are_refused(count: int, first: int) -> None:
    with pytest.raises(ContainerError):
        container_specs(count, first=first)


def test_names_fit_the_kernels_interface_name_limit() -> None:
    spec = container_specs(1, first=255)[0]
    assert spec.netns("pv0123ab") == "pv0123ab-c255"
    assert spec.port("pv0123ab") == "pv0123abc255" and len(spec.port("pv0123ab")) <= 15


@pytest.mark.parametrize("script", [DISCOVERY_SCRIPT, IMAGE_SCRIPT])
def test_only_the_provisioner_words_of_the_kernel_line_reach_pid_1(script: str) -> None:
    args = parse_boot_script(script)
    assert args.url == BASE and args.mac == MAC
    assert all(w.startswith("provisioner.") for w in args.words)
    # no initrd=, boot=live, fetch=, console=: and never a bare "single" or "3"
    assert not {"single", "3", "boot=live"} & set(args.words)


def test_the_per_boot_token_is_taken_whole() -> None:
    assert parse_boot_script(DISCOVERY_SCRIPT).token == "tok-EN_1"
    assert parse_boot_script(DISCOVERY_SCRIPT).value("provisioner.after") == "reboot"


def test_a_script_without_a_kernel_line_is_an_error_naming_it() -> None:
    with pytest.raises(ContainerError, match=r"no kernel line.*state: local"):
        parse_boot_script(LOCAL_SCRIPT)


def test_a_kernel_line_without_the_token_is_an_error() -> None:
    script = DISCOVERY_SCRIPT.replace("provisioner.token=tok-EN_1", "")
    with pytest.raises(ContainerError, match=r"provisioner\.token"):
        parse_boot_script(script)


def test_the_last_value_of_a_repeated_word_wins_as_on_a_kernel_line() -> None:
    args = BootArgs(("provisioner.url=a", "provisioner.url=b"))
    assert args.url == "b" and args.token == ""


def test_the_root_is_cached_by_its_squashfs_digest() -> None:
    assert rootfs_dir(Path("/lab/rootfs"), "ab" * 32) == Path("/lab/rootfs/abababababababab")


def test_veth_host0_with_the_nodes_mac_in_its_namespace_the_peer_on_the_bridge() -> None:
    spec = ContainerSpec("ctr2", "52:54:00:98:00:02", 2)
    add, master, up = veth_argv("pv0123ab", spec)
    assert add == [
        "ip", "link", "add", "pv0123abc2", "type", "veth", "peer", "name", "host0",
        "address", "52:54:00:98:00:02", "netns", "pv0123ab-c2",
    ]  # fmt: skip
    assert master == ["ip", "link", "set", "pv0123abc2", "master", "br0"]
    assert up[-1] == "up"


def test_nspawn_boots_the_shared_root_in_the_nodes_namespace_with_its_args() -> None:
    spec = ContainerSpec("ctr1", MAC, 1)
    args = parse_boot_script(DISCOVERY_SCRIPT)
    argv = nspawn_argv(spec, Path("/lab/rootfs/abc"), Path("/run/netns/pv1-c1"), args)
    # nspawn runs in the node's namespace (else the container's /sys is the host's)
    assert argv[:3] == ["nsenter", "--net=/run/netns/pv1-c1", "systemd-nspawn"]
    for option in (
        "--boot",
        "--register=no",
        "--keep-unit",
        "--network-namespace-path=/run/netns/pv1-c1",
        "--capability=CAP_NET_ADMIN",
        "--volatile=overlay",
        "--directory=/lab/rootfs/abc",
        "--machine=pv1-c1",
        "--hostname=ctr1",
    ):
        assert option in argv
    assert "--tmpfs=/sys/bus/pci/devices:mode=0755" in argv  # the host's PCI devices hidden
    # PID 1's arguments come last, after every option
    assert argv[-len(args.words) :] == list(args.words)
    assert "ip" not in argv and "netns" not in argv  # never `ip netns exec`: it remounts /sys


MOUNTS_HYBRID = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
proc /proc proc rw 0 0
"""
MOUNTS_UNIFIED = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec 0 0\n"


def test_cgroups_are_made_in_name_systemd_and_the_unified_hierarchy() -> None:
    assert cgroup_roots(MOUNTS_HYBRID) == [
        Path("/sys/fs/cgroup/systemd"),
        Path("/sys/fs/cgroup/unified"),
    ]
    assert cgroup_roots(MOUNTS_UNIFIED) == [Path("/sys/fs/cgroup")]
    assert cgroup_dirs(cgroup_roots(MOUNTS_UNIFIED), "pv1-c1") == [Path("/sys/fs/cgroup/pv1-c1")]


def test_the_wrapper_moves_itself_into_each_cgroup_then_execs_the_command() -> None:
    argv = in_cgroups_argv([Path("/cg/a/x"), Path("/cg/b/x")], ["systemd-nspawn", "--boot"])
    assert argv[:2] == ["sh", "-c"] and "exec" in argv[2]
    assert argv[3:] == [
        "sh", "2", "/cg/a/x/cgroup.procs", "/cg/b/x/cgroup.procs", "systemd-nspawn", "--boot",
    ]  # fmt: skip


def test_under_systemd_a_transient_scope_holds_the_container() -> None:
    assert scope_argv("pv1-c1.scope", ["systemd-nspawn"]) == [
        "systemd-run", "--scope", "--quiet", "--unit=pv1-c1.scope", "--", "systemd-nspawn",
    ]  # fmt: skip


def test_inotify_instances_grow_with_the_node_count_and_never_shrink() -> None:
    assert inotify_needed(3, 128) is None and inotify_needed(20, 128) is None
    assert inotify_needed(21, 128) == 128 + 21 * 16
    assert inotify_needed(100, 8192) is None


def test_started_nodes_round_trip_through_json_data() -> None:
    node = Started("ctr1", MAC, "pv1-c1", 4242, ("/cg/x",), "/lab/ctr1.console.log", 1.5)
    assert Started.from_dict(node.as_dict()) == node


def ev(kind: EventKind, ts: float = 0.0) -> Event:
    return Event(MAC, ts, kind, {})


def test_ready_is_the_keys_and_the_report_after_the_latest_script() -> None:
    boot = [ev(EventKind.SCRIPT), ev(EventKind.KEYS), ev(EventKind.INVENTORY)]
    assert steps_reached(boot) == ["script", "keys", "ready"] and is_ready(boot)
    # a restart fetches a new script: the earlier boot's report does not count
    again = [*boot, ev(EventKind.SCRIPT), ev(EventKind.KEYS)]
    assert steps_reached(again) == ["script", "keys"] and not is_ready(again)
    assert steps_reached([ev(EventKind.INVENTORY)]) == []


# ------------------------------------------------------------------ what a container reports

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "tests" / "fixtures" / "lab-container" / "agent-report.txt"
AGENT = ROOT / "images" / "agent" / "provisioner-agent"


def test_a_container_reports_its_own_nic_no_pci_device_and_the_hosts_kernel() -> None:
    """The agent's report from ctr2 (captured in a lab): host0 with the node's MAC, none
    of the host's NICs or PCI devices, the host's kernel (a container has no other)."""
    inventory = parse_dump(REPORT.read_text()).inventory
    assert [(n.name, n.mac, n.driver) for n in inventory.nics] == [
        ("host0", "52:54:00:98:00:02", None)
    ]
    assert inventory.pci == () and inventory.dmi.system_vendor is None
    assert inventory.hostname == "ctr2" and inventory.kernel is not None
    assert {k.type for k in inventory.ssh_host_keys} >= {"ssh-ed25519"}


def test_a_container_node_is_a_generic_cpu_node() -> None:
    """No rule in the profile language sees a container (DMI, CPU and memory are the
    host's); with the host's PCI devices hidden it matches only the fallback."""
    inventory = parse_dump(REPORT.read_text()).inventory
    match = fingerprint(inventory, load_profiles(ROOT / "hwprofiles"))
    assert match.profile == "generic-cpu"


@pytest.mark.parametrize("shell", ["dash", "busybox"])
def test_in_a_container_the_agent_takes_its_settings_from_pid_1s_arguments(
    tmp_path: Path, shell: str
) -> None:
    """/proc/cmdline is the host's (here with another provisioner.url); PID 1's
    NUL-separated arguments carry the container's boot and win, all keys from there."""
    argv = ["busybox", "sh"] if shell == "busybox" else ["dash"]
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed")
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "cmdline").write_text("BOOT_IMAGE=/vmlinuz provisioner.url=http://host:1 quiet\n")
    (proc / "1" / "cmdline").write_bytes(
        b"/usr/lib/systemd/systemd\0provisioner.url=http://127.0.0.1:9\0"
        b"provisioner.mac=52:54:00:98:00:07\0provisioner.token=t\0"
    )
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "PROVISIONER_ROOT": str(tmp_path),
        "PROVISIONER_RETRIES": "1",
    }
    done = subprocess.run(
        [*argv, str(AGENT), "--keys"], env=env, capture_output=True, text=True, timeout=30
    )
    assert "GET http://127.0.0.1:9/api/v1/nodes/52:54:00:98:00:07/authorized_keys" in done.stderr
    # on a machine, PID 1's arguments carry no provisioner.url: the kernel's are read
    (proc / "1" / "cmdline").write_bytes(b"/sbin/init\0splash\0")
    (proc / "cmdline").write_text("provisioner.url=http://127.0.0.1:9 provisioner.mac=aa:bb\n")
    done = subprocess.run(
        [*argv, str(AGENT), "--keys"], env=env, capture_output=True, text=True, timeout=30
    )
    assert "GET http://127.0.0.1:9/api/v1/nodes/aa:bb/authorized_keys" in done.stderr
