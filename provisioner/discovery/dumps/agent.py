"""The agent's raw report, read by :func:`provisioner.discovery.report.parse_report`."""

from __future__ import annotations

from provisioner.discovery import report
from provisioner.discovery.model import (
    Cpu,
    Disk,
    Dmi,
    Inventory,
    Nic,
    PciDevice,
    SshHostKey,
)

DMI_KEYS = {
    "system_vendor": "sys_vendor",
    "system_product": "product_name",
    "system_serial": "product_serial",
    "board_vendor": "board_vendor",
    "board_name": "board_name",
    "bios_vendor": "bios_vendor",
    "bios_version": "bios_version",
}


def from_report(result: report.ParseResult) -> Inventory:
    """The agent's inventory in this model: 6-digit class -> class + prog-if."""
    inv = result.inventory
    cpu = inv.cpu
    return Inventory(
        pci=tuple(
            PciDevice(
                address=d.address,
                vendor=d.vendor,
                device=d.device,
                subsystem_vendor=d.subsystem_vendor,
                subsystem_device=d.subsystem_device,
                pci_class=d.pci_class[:4],
                prog_if=d.pci_class[4:6] or None,
                driver=d.driver,
                numa_node=d.numa_node,
            )
            for d in inv.pci
        ),
        cpu=Cpu(cpu.vendor, cpu.model_name, cpu.sockets, cpu.cores, cpu.threads, cpu.flags)
        if cpu
        else None,
        memory_bytes=inv.memory_bytes,
        dmi=Dmi(**{ours: inv.dmi.get(theirs) or None for ours, theirs in DMI_KEYS.items()}),
        nics=tuple(Nic(n.name, n.mac, n.speed_mbps, n.driver) for n in inv.nics),
        disks=tuple(
            Disk(d.name, d.size_bytes, d.rotational, d.model, d.serial, d.ids) for d in inv.disks
        ),
        firmware=inv.firmware,
        kernel=inv.kernel,
        hostname=inv.hostname,
        ssh_host_keys=tuple(
            SshHostKey(k.type, k.fingerprint, k.public_key) for k in inv.ssh_host_keys
        ),
        problems=list(result.problems),
    )


def parse(text: str) -> Inventory:
    return from_report(report.parse_report(text))
