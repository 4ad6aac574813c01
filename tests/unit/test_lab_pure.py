from __future__ import annotations

from pathlib import Path

from provisioner.lab.lab import judge
from provisioner.lab.vm import VmSpec, qemu_argv
from provisioner.records import Event, EventKind
from provisioner.timeline import steps_reached

MAC = "52:54:00:99:00:01"


def ev(kind: EventKind, **detail: str | bool) -> Event:
    return Event(MAC, 0.0, kind, detail)


def test_steps_in_boot_order_whatever_the_event_order() -> None:
    events = [
        ev(EventKind.DHCP, client="uefi"),
        ev(EventKind.DHCP_REPLY),
        ev(EventKind.TFTP, ok=True),
        ev(EventKind.DHCP, client="ipxe"),
        ev(EventKind.SCRIPT),
        ev(EventKind.HTTP_FILE, file="discovery/initrd"),
        ev(EventKind.HTTP_FILE, file="discovery/vmlinuz"),
        ev(EventKind.INVENTORY),
    ]
    assert steps_reached(events) == [
        "dhcp",
        "tftp",
        "ipxe",
        "script",
        "kernel",
        "initrd",
        "inventory",
    ]


def test_a_failed_tftp_is_not_a_step() -> None:
    assert steps_reached([ev(EventKind.DHCP_REPLY), ev(EventKind.TFTP, ok=False)]) == ["dhcp"]


def test_judge() -> None:
    assert judge("discovered", [], None, False, 0) == "discovered"
    assert judge("new", ["dhcp"], 10, False, 20) == "failed"  # VM gone before inventory
    assert judge("new", ["dhcp"], 10, True, 20) == "booting"
    assert judge("new", ["dhcp"], 500, True, 600) == "stuck"
    # Failed on the appliance (its root was not the published one): failed, VM up or not.
    assert judge("failed", ["dhcp", "image"], 1, True, 5, target="ready") == "failed"
    assert judge("unseen", [], None, True, 30, stuck_after=20) == "stuck"


def test_uefi_vm_uses_ovmf_pxe_and_bios_vm_the_ipxe_rom(tmp_path: Path) -> None:
    uefi = qemu_argv(VmSpec("labnode2", MAC, "uefi", "pvt2", tmp_path))
    nic = uefi[uefi.index("-device") + 1]
    assert nic.endswith(",romfile=") and f"mac={MAC}" in nic and "bootindex=1" in nic
    assert any("OVMF_CODE" in a for a in uefi) and "-accel" in uefi
    assert uefi[uefi.index("-accel") + 1] == "tcg"
    bios = qemu_argv(VmSpec("labnode1", MAC, "bios", "pvt1", tmp_path))
    assert not any("romfile" in a for a in bios) and not any("OVMF" in a for a in bios)
    assert f"unix:{tmp_path}/labnode1.qmp,server=on,wait=off" in bios
    assert "tap,id=n0,ifname=pvt1,script=no,downscript=no" in bios
    disks = [bios[i + 1] for i, a in enumerate(bios) if a == "-device" and "blk" in bios[i + 1]]
    assert disks == [f"virtio-blk-pci,drive=d{i},serial=lab-disk{i}" for i in (0, 1)]
    assert f"file={tmp_path}/labnode1.lab-disk1,if=none,id=d1,format=raw" in bios


def test_a_node_sent_its_image_goes_on_to_root_keys_and_ready() -> None:
    discovery = [
        ev(EventKind.DHCP_REPLY),
        ev(EventKind.SCRIPT, boot="discovery"),
        ev(EventKind.HTTP_FILE, file="discovery@1/vmlinuz"),
        ev(EventKind.INVENTORY),
    ]
    image = [
        ev(EventKind.SCRIPT, boot="image"),
        ev(EventKind.HTTP_FILE, file="debian-trixie@1/vmlinuz"),
        ev(EventKind.HTTP_FILE, file="debian-trixie@1/root.squashfs"),
        ev(EventKind.KEYS),
    ]
    steps = steps_reached(discovery + image)
    assert steps == ["dhcp", "script", "kernel", "inventory", "image", "root", "keys"]
    assert judge("enrolled", steps, 5, True, 60, target="ready") == "booting"
    assert judge("enrolled", steps, 5, True, 60) == "discovered"
    done = steps_reached([*discovery, *image, ev(EventKind.INVENTORY)])
    assert done[-1] == "ready" and judge("enrolled", done, 1, True, 90, target="ready") == "ready"


def test_the_lab_config_names_the_image_its_nodes_boot(tmp_path: Path) -> None:
    from provisioner.config import Mode, parse_config
    from provisioner.lab.lab_config import lab_config

    plain = parse_config(lab_config(Mode.FULL, tmp_path))
    assert "provisioner.after=poweroff" in plain.boot.kernel_args
    assert plain.boot.image == "debian-trixie"
    cfg = parse_config(lab_config(Mode.FULL, tmp_path, "debian-trixie@2"))
    assert cfg.boot.image == "debian-trixie@2" and cfg.boot.efi_binary == "snponly.efi"
    # `lab up --profiles DIR`: the nodes are fingerprinted against DIR's profiles.
    mine = tmp_path / "my-profiles"
    mine.mkdir()
    cfg = parse_config(lab_config(Mode.FULL, tmp_path, "debian-trixie-vulkan", str(mine)))
    assert cfg.cluster.profiles_dir == mine and cfg.boot.image == "debian-trixie-vulkan"
    assert plain.cluster.profiles_dir != mine


def test_lab_vms_start_powered_off_for_the_qemu_driver(tmp_path: Path) -> None:
    argv = qemu_argv(VmSpec("labnode1", MAC, "bios", "pvt1", tmp_path, powered_off=True))
    assert "-S" in argv and "-no-shutdown" in argv
    assert "-S" not in qemu_argv(VmSpec("labnode1", MAC, "bios", "pvt1", tmp_path))


def test_only_routes_as_specific_as_the_lab_subnet_compete_with_its_leg() -> None:
    from ipaddress import IPv4Network

    from provisioner.lab.netns import overlapping_routes

    lab = IPv4Network("10.99.0.0/24")
    routes = [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
        {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel"},
        {"dst": "10.0.0.0/8", "gateway": "192.0.2.9", "dev": "eth0"},  # wider: the leg wins
        {"dst": "10.99.0.0/24", "dev": "pv0a0b0ch0", "protocol": "kernel"},  # another lab
        {"dst": "10.99.0.7", "gateway": "192.0.2.9", "dev": "eth1"},  # a host route
        {"dst": "10.99.1.0/24", "dev": "eth2"},  # a neighbour, not ours
        {"type": "unreachable", "dst": "10.99.0.0/25"},
        {"type": "local", "dst": "10.99.0.3", "dev": "lo"},
    ]
    assert overlapping_routes(routes, lab) == [
        "10.99.0.0/24 dev pv0a0b0ch0",
        "10.99.0.7 dev eth1",
        "10.99.0.0/25 dev ?",
    ]
    assert overlapping_routes(routes[:3], lab) == []


def test_a_lab_leg_name_fits_an_interface_name_and_cleanup_knows_it() -> None:
    from provisioner.lab.netns import _LEG, IFNAMSIZ, leg_name, new_prefix

    prefix = new_prefix()
    leg = leg_name(prefix)
    assert leg.startswith(prefix) and len(leg) <= IFNAMSIZ and _LEG.match(leg)
    assert not _LEG.match("eth0") and not _LEG.match(f"{prefix}c1")
