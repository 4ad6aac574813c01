"""Known limits that a boot image can pass, checked before a node meets them.

Pure: sizes and memory in, findings (level + reason) out. The builders refuse an image
with an ``error`` finding and print warnings; the boot policy refuses to send a node an
image its RAM cannot hold (the root is fetched into RAM and runs from there).

Limits and where they come from:

- The kernel unpacks the initramfs with 32-bit sizes in its gzip and cpio readers: an
  initrd over 4 GiB cannot be unpacked (``Initramfs unpacking failed``), whatever loads it.
- Legacy BIOS loaders place the initrd below 4 GiB of physical address space, beside the
  firmware's reserved areas: past ~3 GiB they fail to load it (iPXE: ``Not enough
  memory``; SYSLINUX-era loaders similarly). UEFI loaders do not share this limit.
- A RAM-held root: live-boot's ``fetch=`` downloads the squashfs into a tmpfs, the
  initramfs is unpacked into RAM (about three times its compressed size), the kernel
  itself, plus what the running system needs (a floor of 512 MiB for systemd, sshd and
  the page cache that a squashfs root reads through).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from provisioner.image import ImageError

GiB = 1 << 30
MiB = 1 << 20
INITRD_UNPACK_LIMIT = 4 * GiB
BIOS_INITRD_LIMIT = 3 * GiB
INITRD_EXPANSION = 3  # unpacked initramfs / compressed size, roughly (gzip, zstd)
SYSTEM_FLOOR = 512 * MiB


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning"
    reason: str

    @property
    def is_error(self) -> bool:
        return self.level == "error"


def _gib(size: int) -> str:
    return f"{size / GiB:.2f} GiB"


def check_initrd(size: int, firmware: str | None = None) -> list[Finding]:
    """Limits on the initrd's size; ``firmware`` ("bios"/"uefi") when the node is known."""
    if size > INITRD_UNPACK_LIMIT:
        return [
            Finding(
                "error",
                f"the initrd is {_gib(size)}: the kernel cannot unpack an initramfs over "
                "4 GiB (32-bit sizes in its gzip/cpio reader); put the root in a squashfs "
                "fetched over HTTP instead",
            )
        ]
    if size > BIOS_INITRD_LIMIT:
        bios = "this node boots with legacy BIOS" if firmware == "bios" else "legacy BIOS nodes"
        return [
            Finding(
                "error" if firmware == "bios" else "warning",
                f"the initrd is {_gib(size)}: {bios} cannot load an initrd past ~3 GiB "
                "(it must sit below 4 GiB beside the firmware's reserved memory)",
            )
        ]
    return []


def ram_needed(squashfs: int, initrd: int, kernel: int) -> int:
    """RAM a node needs to run an image whose root is held in RAM."""
    return squashfs + INITRD_EXPANSION * initrd + kernel + SYSTEM_FLOOR


def check_ram(
    memory_bytes: int | None, *, squashfs: int, initrd: int, kernel: int
) -> list[Finding]:
    """Whether a node with ``memory_bytes`` (None: unknown) can hold the image in RAM."""
    if memory_bytes is None:
        return []
    needed = ram_needed(squashfs, initrd, kernel)
    if memory_bytes < needed:
        return [
            Finding(
                "error",
                f"the node has {memory_bytes // MiB} MiB of RAM; this image needs at least "
                f"{needed // MiB} MiB to run from RAM (root {squashfs // MiB} MiB + initrd "
                f"unpacked ~{INITRD_EXPANSION * initrd // MiB} MiB + kernel + "
                f"{SYSTEM_FLOOR // MiB} MiB for the system)",
            )
        ]
    return []


def check_layer(name: str, added: int, limit: int | None) -> list[Finding]:
    """A layer's own limit (``max_mib`` in its recipe) on what it adds to the root: every
    byte of it is in every node's RAM, so a layer that grows past what its author allowed
    (a dependency pulling a desktop in) is refused at build, not found on the nodes."""
    if limit is None or added <= limit:
        return []
    return [
        Finding(
            "error",
            f"the layer {name} adds {added // MiB} MiB to the root, over its max_mib of "
            f"{limit // MiB} MiB (the manifest's layer.packages lists what it brought)",
        )
    ]


def refuse_errors(what: str, findings: Iterable[Finding]) -> None:
    """Raise ImageError naming ``what`` when a finding is an error."""
    errors = [f.reason for f in findings if f.is_error]
    if errors:
        raise ImageError(f"{what}: " + "; ".join(errors))
