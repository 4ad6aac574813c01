"""Lab virtual machines: QEMU with real PXE firmware and nothing to boot but the network.

``qemu_argv`` is pure (a VmSpec in, an argv out). BIOS VMs run SeaBIOS with QEMU's own
virtio-net option ROM, which is iPXE: they skip the TFTP step as real iPXE-flashed NICs
do. UEFI VMs run OVMF with the NIC's option ROM removed (``romfile=``), so OVMF's own PXE
does DHCP, fetches ipxe.efi over TFTP and chains it: the full chain a real UEFI board
takes. Each VM gets a serial console log and a QMP socket (power control uses it).

QEMU runs under TCG: on these machines KVM makes the iPXE ROM hang and OVMF die with an
emulation failure; ``accel="kvm"`` is for hosts where it works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from provisioner.lab.netns import LabError

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
DISK_BYTES = 1024 * 1024 * 1024  # sparse: room for a model cache (node disk init)
# Two disks, as a server with a system disk and a spare: /dev/disk/by-id/virtio-lab-disk0
# and virtio-lab-disk1 in the guest (a diskless node boots the shared image either way).
DISK_SERIALS = ("lab-disk0", "lab-disk1")


@dataclass(frozen=True)
class VmSpec:
    name: str
    mac: str
    firmware: str  # "bios" | "uefi"
    tap: str
    workdir: Path
    memory_mib: int = 512
    accel: str = "tcg"
    powered_off: bool = False  # start with the CPU stopped (-S): the qemu power driver starts it

    @property
    def console(self) -> Path:
        return self.workdir / f"{self.name}.console.log"

    @property
    def qmp(self) -> Path:
        return self.workdir / f"{self.name}.qmp"

    @property
    def disks(self) -> tuple[Path, ...]:
        return tuple(self.workdir / f"{self.name}.{serial}" for serial in DISK_SERIALS)

    @property
    def vars(self) -> Path:
        return self.workdir / f"{self.name}.OVMF_VARS.fd"


def qemu_argv(spec: VmSpec) -> list[str]:
    nic = f"virtio-net-pci,netdev=n0,mac={spec.mac},bootindex=1"
    if spec.firmware == "uefi":
        nic += ",romfile="  # OVMF's own PXE, not QEMU's iPXE ROM
    argv = [
        QEMU,
        "-name",
        spec.name,
        "-machine",
        "q35",
        "-accel",
        spec.accel,
        "-m",
        str(spec.memory_mib),
        # Every CPU feature the accelerator can give (TCG: up to AVX2 in QEMU 7.2): the
        # default qemu64 model lacks SSE4.2/POPCNT, so x86-64-v2 builds (llama.cpp's
        # default baseline) would die of an illegal instruction in a lab VM.
        "-cpu",
        "max",
        "-smp",
        "1",
        "-nographic",
        "-nodefaults",
        # -S: the CPU waits for the power driver's `cont`; -no-shutdown: a guest that powers
        # off stays a VM that is off (QMP status "shutdown"), so it can be powered on again.
        *(["-S", "-no-shutdown"] if spec.powered_off else []),
        "-serial",
        f"file:{spec.console}",
        "-qmp",
        f"unix:{spec.qmp},server=on,wait=off",
        "-netdev",
        f"tap,id=n0,ifname={spec.tap},script=no,downscript=no",
        "-device",
        nic,
    ]
    for i, (path, serial) in enumerate(zip(spec.disks, DISK_SERIALS, strict=True)):
        argv += [
            "-drive",
            f"file={path},if=none,id=d{i},format=raw",
            "-device",
            f"virtio-blk-pci,drive=d{i},serial={serial}",
        ]
    if spec.firmware == "uefi":
        argv += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={spec.vars}",
        ]
    else:
        argv += ["-boot", "order=n"]
    return argv


def prepare(spec: VmSpec) -> None:
    """The VM's files: its empty disks and its own UEFI vars."""
    spec.workdir.mkdir(parents=True, exist_ok=True)
    for path in spec.disks:
        with open(path, "wb") as fh:
            fh.truncate(DISK_BYTES)
    if spec.firmware == "uefi":
        if not OVMF_CODE.exists():
            raise LabError(f"{OVMF_CODE} is missing: apt-get install ovmf")
        shutil.copyfile(OVMF_VARS, spec.vars)
    spec.console.write_bytes(b"")


def console_tail(spec: VmSpec, lines: int = 15) -> str:
    try:
        text = spec.console.read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""
    cleaned = [ln.rstrip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return "\n".join(cleaned[-lines:])


KVM_FAILURES = ("emulation failure", "KVM internal error", "failed to initialize kvm")


def probe_accel(workdir: Path, seconds: float = 8.0) -> tuple[str, str]:
    """("kvm" or "tcg", why): KVM only if OVMF really runs under it here.

    Under the nested KVM of some hosts OVMF dies at once with an emulation failure and
    the BIOS iPXE ROM hangs; a short OVMF boot tells which kind of host this is.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "no usable /dev/kvm"
    if not OVMF_CODE.exists():
        return "tcg", f"{OVMF_CODE} missing: cannot probe KVM"
    workdir.mkdir(parents=True, exist_ok=True)
    console, varsfile = workdir / "kvm-probe.console", workdir / "kvm-probe.vars"
    shutil.copyfile(OVMF_VARS, varsfile)
    console.write_bytes(b"")
    argv = [
        QEMU,
        "-accel",
        "kvm",
        "-machine",
        "q35",
        "-m",
        "256",
        "-nographic",
        "-nodefaults",
        "-serial",
        f"file:{console}",
        "-net",
        "none",
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={varsfile}",
    ]
    output = workdir / "kvm-probe.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    deadline = time.monotonic() + seconds
    verdict = ("tcg", f"OVMF printed nothing under KVM in {seconds:.0f} s")
    try:
        while time.monotonic() < deadline:
            said = output.read_text(errors="replace")
            failure = next((f for f in KVM_FAILURES if f in said), None)
            if failure:
                verdict = ("tcg", f"KVM here: {failure}")
                break
            if b"BdsDxe" in console.read_bytes():
                verdict = ("kvm", "OVMF runs under KVM")
                break
            if proc.poll() is not None:
                verdict = ("tcg", f"QEMU with KVM exited {proc.returncode}")
                break
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    return verdict
