from __future__ import annotations

from pathlib import Path

from provisioner.discovery.report import parse_report, split_sections

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "agent"


def test_a_qemu_report_parses_whole() -> None:
    result = parse_report((FIXTURES / "qemu-q35-uefi.txt").read_text())
    inv = result.inventory
    assert result.problems == []
    assert (inv.firmware, inv.kernel, inv.machine) == ("uefi", "6.1.0-41-amd64", "x86_64")
    assert inv.memory_bytes == 486304 * 1024
    assert inv.cpu is not None and inv.cpu.model_name == "QEMU Virtual CPU version 2.5+"
    assert (inv.cpu.sockets, inv.cpu.cores, inv.cpu.threads) == (1, 1, 1)
    assert "svm" in inv.cpu.flags
    nic = next(d for d in inv.pci if d.pci_class == "020000")
    assert (nic.ids, nic.subsystem_vendor, nic.driver, nic.numa_node) == (
        "1af4:1000",
        "1af4",
        "virtio-pci",
        -1,
    )
    bridge = inv.pci[0]
    assert bridge.driver is None and bridge.ids == "8086:29c0"
    assert [(n.name, n.mac, n.driver, n.speed_mbps) for n in inv.nics] == [
        ("eth0", "52:54:00:aa:bb:01", "virtio_net", None)
    ]
    assert [(d.name, d.size_bytes, d.rotational, d.model) for d in inv.disks] == [
        ("vda", 64 * 1024 * 1024, True, None)
    ]
    assert inv.dmi["sys_vendor"] == "QEMU" and inv.dmi["board_vendor"] == ""
    assert inv.as_dict()["schema"] == "provisioner.inventory/1"


def test_broken_bits_are_reported_not_raised() -> None:
    text = (
        "junk before any header\n==> agent <==\nversion=7\n==> system <==\nfirmware=coreboot\n"
        "==> pci 0000:00:01.0 <==\nvendor=zz\n==> block sda <==\nsize=\n==> weird <==\nx=1\n"
        "==> file /proc/cpuinfo <==\nnothing here\n"
    )
    result = parse_report(text)
    assert result.inventory.pci == () and result.inventory.disks == ()
    assert result.inventory.firmware is None
    joined = "\n".join(result.problems)
    for fragment in (
        "version '7'",
        "pci 0000:00:01.0",
        "block sda",
        "'weird'",
        "coreboot",
        "cpuinfo",
    ):
        assert fragment in joined


def test_empty_and_binary_input() -> None:
    assert parse_report("").problems[0].startswith("no sections")
    assert parse_report("\x00\xff==> <==").inventory.pci == ()


def test_values_keep_spaces_and_equals_signs() -> None:
    sections = split_sections("==> dmi <==\nproduct_name=A = B  \n==> x y z <==\n")
    assert sections == [("dmi", ["product_name=A = B  "]), ("x y z", [])]
    assert parse_report("==> dmi <==\nproduct_name=A = B\n").inventory.dmi == {
        "product_name": "A = B"
    }


def test_multi_socket_cpuinfo_counts() -> None:
    blocks = []
    for n in range(8):
        blocks.append(
            f"processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n"
            f"physical id\t: {n // 4}\ncore id\t\t: {n % 2}\nflags\t\t: avx2 avx512f\n"
        )
    result = parse_report("==> file /proc/cpuinfo <==\n" + "\n".join(blocks))
    cpu = result.inventory.cpu
    assert cpu is not None and (cpu.sockets, cpu.cores, cpu.threads) == (2, 4, 8)


def test_ssh_host_keys_become_fingerprints_like_ssh_keygen() -> None:
    import base64
    import hashlib

    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
    line = f"ssh-ed25519 {base64.b64encode(blob).decode()} root@node0"
    result = parse_report(f"==> ssh <==\nkey={line}\nkey=garbage\n")
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert [(k.type, k.fingerprint) for k in result.inventory.ssh_host_keys] == [
        ("ssh-ed25519", expected)
    ]
    assert any("not a public key" in p for p in result.problems)


def test_a_disks_serial_and_stable_names_reach_the_stored_inventory() -> None:
    from provisioner.discovery import schema
    from provisioner.discovery.dumps.agent import from_report

    report = (
        (FIXTURES / "qemu-q35-uefi.txt")
        .read_text()
        .replace(
            "==> block vda <==\n",
            "==> block vda <==\nserial=lab-disk1\n"
            "ids=/dev/disk/by-id/virtio-lab-disk1 /dev/disk/by-path/pci-0000:00:04.0\n",
        )
    )
    result = parse_report(report)
    (disk,) = result.inventory.disks
    assert disk.serial == "lab-disk1"
    assert disk.ids == ("/dev/disk/by-id/virtio-lab-disk1", "/dev/disk/by-path/pci-0000:00:04.0")
    stored = schema.to_json(schema.check(from_report(result)))
    assert stored["disks"][0]["serial"] == "lab-disk1"
    assert stored["disks"][0]["ids"][0] == "/dev/disk/by-id/virtio-lab-disk1"


def test_an_older_agent_without_serials_leaves_them_empty() -> None:
    (disk,) = parse_report((FIXTURES / "qemu-q35-uefi.txt").read_text()).inventory.disks
    assert (disk.serial, disk.ids) == (None, ())
