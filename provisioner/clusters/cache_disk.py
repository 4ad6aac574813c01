"""A node's own disk as its cache: ``provisioner node disk init NODE DEV --yes``.

A stateless node (root in RAM) fetches its runtime and model again at every boot. A node
with a spare disk can keep them: the control node formats that disk once, only with the
user's consent, and mounts it on ``/var/lib/provisioner`` (where post-install puts the
runtimes and models it fetches), at once and at every boot after (the base recipe's
``cache disk`` step, before any fetch). A fetch whose file is there with the sha256 it
was checked against is not fetched again; llama.cpp's RPC servers keep their tensor
cache there too (``rpc-server -c``).

The disk is named the way that survives a reboot and a re-cabling: ``/dev/disk/by-id/...``
(its serial) or ``/dev/disk/by-path/...``, never ``sda`` or ``vdb`` (kernel names move).
What is on it decides (:func:`judge`, pure, from ``lsblk -J`` and ``wipefs -n -J``):

- blank (no partition table, no signature): formatted with ``--yes`` (a GPT with one
  partition named ``provisioner-cache``, ext4 labelled ``prov-cache``), else
  refused, nothing written;
- ours (that partition and label): mounted if it is not (nothing formatted again);
- anything else (another partition table, a filesystem, RAID or LVM signatures): refused,
  whatever the flags: a disk this appliance did not make is never touched.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import Any

from provisioner.clusters.site import Site
from provisioner.errors import ProvisionerError, Refused, UsageError
from provisioner.records import EventKind, Node

PART_NAME = "provisioner-cache"  # the GPT partition's name (36 characters at most)
FS_LABEL = "prov-cache"  # the ext4 label (16 bytes at most: mkfs.ext4 cuts a longer one)
MOUNT = "/var/lib/provisioner"
_STABLE = re.compile(r"/dev/disk/by-(id|path)/(?!\.\.?\Z)[A-Za-z0-9:._+-]+")


class DiskRefused(Refused):
    """A disk that is not formatted as things stand (foreign, in use, no --yes)."""


def check_device(device: str) -> str:
    """``device`` if it is a stable name (by-id or by-path); UsageError otherwise."""
    if _STABLE.fullmatch(device):
        return device
    raise UsageError(
        f"{device!r}: name the disk by /dev/disk/by-id/... (its serial) or "
        "/dev/disk/by-path/..., never a kernel name such as sda or vdb (they move between boots)"
    )


@dataclass(frozen=True)
class Verdict:
    kind: str  # blank | ours | foreign | not-a-disk
    what: str  # for the user: size, table, partitions, signatures
    mounted: bool = False  # ours, mounted on MOUNT


def _size(value: object) -> str:
    try:
        return f"{int(str(value)) / (1 << 30):.1f} GiB"
    except ValueError:
        return str(value)


def judge(lsblk: dict[str, Any], wipefs: dict[str, Any]) -> Verdict:
    """Pure: what is on the disk, from ``lsblk -J -b -o NAME,TYPE,SIZE,PTTYPE,PARTLABEL,
    LABEL,FSTYPE,MOUNTPOINT DEV`` and ``wipefs -n -J DEV`` (the disk's own signatures)."""
    devices = lsblk.get("blockdevices") or []
    if not devices:
        return Verdict("not-a-disk", "lsblk lists nothing")
    disk = devices[0]
    size = _size(disk.get("size"))
    # A loop device is a disk too: a file behind one is what a lab container node has
    # (provisioner.lab.loopdisk); one that carries anything is refused below like any disk.
    if disk.get("type") not in ("disk", "loop"):
        return Verdict("not-a-disk", f"a {disk.get('type')}, not a whole disk")
    parts = disk.get("children") or []
    signatures = sorted({str(s.get("type")) for s in wipefs.get("signatures") or []})
    table = disk.get("pttype")
    if disk.get("mountpoint"):
        return Verdict("foreign", f"{size}, mounted on {disk.get('mountpoint')}")
    if not parts and not table and not signatures and not disk.get("fstype"):
        return Verdict("blank", f"{size}, blank")
    if (
        table == "gpt"
        and len(parts) == 1
        and parts[0].get("partlabel") == PART_NAME
        and parts[0].get("label") == FS_LABEL
        and parts[0].get("fstype") == "ext4"
    ):
        mounted = parts[0].get("mountpoint") == MOUNT
        return Verdict("ours", f"{size}, the provisioner cache", mounted)
    said = [f"a {table} partition table" if table else ""]
    if parts:
        listed = ", ".join(
            f"{p.get('name')} {p.get('fstype') or 'no filesystem'}"
            + (f" on {p.get('mountpoint')}" if p.get("mountpoint") else "")
            for p in parts
        )
        said.append(f"{len(parts)} partition(s): {listed}")
    if disk.get("fstype"):
        said.append(f"a {disk.get('fstype')} filesystem on the whole disk")
    if signatures:
        said.append(f"signatures {', '.join(signatures)}")
    return Verdict("foreign", f"{size}, " + "; ".join(s for s in said if s))


def inspect_command(device: str) -> str:
    q = shlex.quote(device)
    return (
        f"set -e; dev=$(readlink -f {q}); udevadm settle 2>/dev/null || true; "
        'lsblk -J -b -o NAME,TYPE,SIZE,PTTYPE,PARTLABEL,LABEL,FSTYPE,MOUNTPOINT "$dev"; '
        'echo "--"; wipefs -n -J "$dev" || echo "{}"'
    )


def format_command(device: str) -> str:
    """Shell (run as root on the node): a GPT with one partition over the whole disk, ext4
    on it, what ``MOUNT`` held so far copied over (no fetch again), then mounted there.

    ``partx -u`` after sfdisk: sfdisk's own re-read (BLKRRPART) adds no partition to a
    loop device on the 6.18 kernel here (a lab container's disk); partx adds those
    missing one by one (BLKPG), and does nothing where the kernel has them already."""
    q, m = shlex.quote(device), shlex.quote(MOUNT)
    return (
        f"set -e; dev=$(readlink -f {q}); "
        f"printf 'label: gpt\\nname={PART_NAME}\\n' | sfdisk --quiet --wipe always \"$dev\"; "
        'partx -u "$dev" 2>/dev/null || true; udevadm settle 2>/dev/null || true; '
        "i=0; while :; do "
        'part=$(lsblk -lnpo NAME,TYPE "$dev" | awk \'$2 == "part" {print $1; exit}\'); '
        '[ -n "$part" ] && [ -b "$part" ] && break; '
        '[ $i -lt 100 ] || { echo "no partition device on $dev after 10 s" >&2; exit 1; }; '
        "sleep 0.1; i=$((i + 1)); done; "
        f'mkfs.ext4 -q -F -L {FS_LABEL} "$part"; '
        f'tmp=$(mktemp -d); mount "$part" "$tmp"; if [ -d {m} ]; then cp -a {m}/. "$tmp"/; fi; '
        f'umount "$tmp"; rmdir "$tmp"; {mount_command(device)}'
    )


def mount_command(device: str) -> str:
    """Mount the cache partition on ``MOUNT`` unless it is mounted (also the base
    recipe's step at every boot)."""
    q, m = shlex.quote(device + "-part1"), shlex.quote(MOUNT)
    return (
        f"mountpoint -q {m} || {{ {_wait_for(q)}mkdir -p {m} && mount -o nodev,nosuid {q} {m}; }}"
    )


def _wait_for(word: str) -> str:
    """Shell: wait up to 10 s for the block device ``word`` (a shell word) to be there: the node
    for a partition comes from udev (or the lab's stand-in) a moment after the kernel
    read the table, and ``udevadm settle`` does not wait where no udev runs."""
    return f"i=0; while [ ! -b {word} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done; "


def parse_inspection(output: str) -> tuple[dict[str, Any], dict[str, Any]]:
    first, _, second = output.partition("\n--\n")
    try:
        lsblk, wipefs = json.loads(first), json.loads(second or "{}")
    except ValueError as exc:
        raise ProvisionerError(f"cannot read lsblk/wipefs output: {exc}: {output[:300]}") from exc
    if not isinstance(lsblk, dict) or not isinstance(wipefs, dict):
        raise ProvisionerError(f"lsblk/wipefs printed no JSON object: {output[:300]}")
    return lsblk, wipefs


@dataclass(frozen=True)
class DiskResult:
    node: str
    device: str
    action: str  # formatted | mounted | unchanged
    what: str

    def as_dict(self) -> dict[str, str]:
        return {"node": self.node, "device": self.device, "action": self.action, "what": self.what}


def init_cache_disk(site: Site, node: Node, device: str, *, yes: bool) -> DiskResult:
    """Make ``device`` the node's cache (see the module's docstring); DiskRefused when it
    is not to be touched, with nothing written."""
    device = check_device(device)
    name = node.hostname or node.mac
    with site.connect(node) as conn:
        seen = conn.run(inspect_command(device), timeout=60)
        if not seen.ok:
            raise DiskRefused(f"{name}: {device}: {seen.output(400) or 'no such disk'}")
        verdict = judge(*parse_inspection(seen.stdout))
        if verdict.kind in ("foreign", "not-a-disk"):
            site.registry.add_event(
                node.mac,
                EventKind.DISK,
                {"device": device, "action": "refused", "what": verdict.what},
            )
            raise DiskRefused(
                f"{name}: {device} ({verdict.what}) was not made by provisioner: refused, "
                "nothing written (wipe it yourself if it is really free)"
            )
        if verdict.kind == "blank" and not yes:
            raise DiskRefused(
                f"{name}: {device} ({verdict.what}) would be partitioned and formatted as "
                f"the node's cache on {MOUNT}: give --yes"
            )
        if verdict.kind == "blank":
            action, command = "formatted", format_command(device)
        elif verdict.mounted:
            action, command = "unchanged", ""
        else:
            action, command = "mounted", mount_command(device)
        if command:
            done = conn.run(command, timeout=600)
            if not done.ok:
                verb = "format" if action == "formatted" else "mount"
                raise ProvisionerError(f"{name}: {device}: {verb} failed: {done.output(800)}")
    site.registry.set_cache_disk(node.mac, device)
    site.registry.add_event(
        node.mac, EventKind.DISK, {"device": device, "action": action, "what": verdict.what}
    )
    return DiskResult(name, device, action, verdict.what)
