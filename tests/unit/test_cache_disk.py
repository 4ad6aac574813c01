"""A node's spare disk as its cache (provisioner/clusters/cache_disk.py): which names are
taken, what ``judge`` makes of lsblk/wipefs output as util-linux 2.38 prints it, and what
``init_cache_disk`` runs over a fake SSH connection and keeps in a real registry. No
sockets; the sfdisk/mkfs checks run the real tools on sparse files (no root needed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from provisioner.clusters.cache_disk import (
    FS_LABEL,
    MOUNT,
    PART_NAME,
    DiskRefused,
    Verdict,
    check_device,
    format_command,
    init_cache_disk,
    inspect_command,
    judge,
    mount_command,
    parse_inspection,
)
from provisioner.clusters.site import Site
from provisioner.errors import ProvisionerError, Refused, UsageError
from provisioner.records import EventKind, Node
from provisioner.registry import Registry
from tests.conftest import unavailable
from tests.fakes.ssh import FakeConnection, FakeNode

DEVICE = "/dev/disk/by-id/virtio-lab-disk0"
MAC = "52:54:00:12:34:56"
GIB64 = 64 << 30  # 68719476736 bytes

# ------------------------------------------------------------------ util-linux 2.38 output
# As `lsblk -J -b -o NAME,TYPE,SIZE,PTTYPE,PARTLABEL,LABEL,FSTYPE,MOUNTPOINT /dev/vdb` and
# `wipefs -n -J /dev/vdb` print them (3-space indent, null for an empty column, "size" a
# number with -b, "offset" a hex string).

LSBLK_BLANK = """\
{
   "blockdevices": [
      {
         "name": "vdb",
         "type": "disk",
         "size": 68719476736,
         "pttype": null,
         "partlabel": null,
         "label": null,
         "fstype": null,
         "mountpoint": null
      }
   ]
}
"""

WIPEFS_NONE = """\
{
   "signatures": [

   ]
}
"""

LSBLK_OURS = """\
{
   "blockdevices": [
      {
         "name": "vdb",
         "type": "disk",
         "size": 68719476736,
         "pttype": "gpt",
         "partlabel": null,
         "label": null,
         "fstype": null,
         "mountpoint": null,
         "children": [
            {
               "name": "vdb1",
               "type": "part",
               "size": 68717379584,
               "pttype": "gpt",
               "partlabel": %(partlabel)s,
               "label": %(label)s,
               "fstype": "ext4",
               "mountpoint": %(mountpoint)s
            }
         ]
      }
   ]
}
"""

WIPEFS_GPT = """\
{
   "signatures": [
      {
         "device": "vdb",
         "offset": "0x200",
         "type": "gpt",
         "uuid": null,
         "label": null
      },{
         "device": "vdb",
         "offset": "0xfffffffe00",
         "type": "gpt",
         "uuid": null,
         "label": null
      },{
         "device": "vdb",
         "offset": "0x1fe",
         "type": "PMBR",
         "uuid": null,
         "label": null
      }
   ]
}
"""

LSBLK_DOS = """\
{
   "blockdevices": [
      {
         "name": "vdb",
         "type": "disk",
         "size": 68719476736,
         "pttype": "dos",
         "partlabel": null,
         "label": null,
         "fstype": null,
         "mountpoint": null,
         "children": [
            {
               "name": "vdb1",
               "type": "part",
               "size": 536870912,
               "pttype": "dos",
               "partlabel": null,
               "label": "boot",
               "fstype": "ext4",
               "mountpoint": null
            },{
               "name": "vdb2",
               "type": "part",
               "size": 68181557248,
               "pttype": "dos",
               "partlabel": null,
               "label": null,
               "fstype": "xfs",
               "mountpoint": null
            }
         ]
      }
   ]
}
"""

WIPEFS_DOS = """\
{
   "signatures": [
      {
         "device": "vdb",
         "offset": "0x1fe",
         "type": "dos",
         "uuid": null,
         "label": null
      }
   ]
}
"""


def ours(mountpoint: str | None) -> str:
    """lsblk's document for a disk provisioner formatted (GPT partition and ext4 named
    PART_NAME, ext4 labelled FS_LABEL), its partition mounted on ``mountpoint``."""
    return LSBLK_OURS % {
        "partlabel": json.dumps(PART_NAME),
        "label": json.dumps(FS_LABEL),
        "mountpoint": json.dumps(mountpoint),
    }


def disk(**columns: Any) -> dict[str, Any]:
    """lsblk's document for one whole disk: every column null but those given."""
    row: dict[str, Any] = {
        "name": "vdb",
        "type": "disk",
        "size": GIB64,
        "pttype": None,
        "partlabel": None,
        "label": None,
        "fstype": None,
        "mountpoint": None,
    }
    row.update(columns)
    return {"blockdevices": [row]}


def part(name: str, **columns: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name,
        "type": "part",
        "size": GIB64 - (2 << 20),
        "pttype": "gpt",
        "partlabel": None,
        "label": None,
        "fstype": None,
        "mountpoint": None,
    }
    row.update(columns)
    return row


def signatures(*types: str) -> dict[str, Any]:
    return {
        "signatures": [
            {"device": "vdb", "offset": "0x1000", "type": t, "uuid": None, "label": None}
            for t in types
        ]
    }


def printed(document: dict[str, Any]) -> str:
    """A document as util-linux prints it (3-space indent, a final newline)."""
    return json.dumps(document, indent=3) + "\n"


def inspection(lsblk: str, wipefs: str) -> str:
    """What inspect_command's script prints on the node: lsblk, a line "--", wipefs."""
    return lsblk + "--\n" + wipefs


def judged(lsblk: str, wipefs: str) -> Verdict:
    return judge(json.loads(lsblk), json.loads(wipefs))


# ------------------------------------------------------------------ check_device


@pytest.mark.parametrize(
    "device",
    [
        "/dev/disk/by-id/virtio-lab-disk0",
        "/dev/disk/by-id/nvme-Samsung_SSD_980_1TB_S649NL0T123456",
        "/dev/disk/by-id/ata-WDC_WD10EZEX-08WN4A0_WD-WCC6Y0RL1234",
        "/dev/disk/by-id/wwn-0x5002538e40a1b2c3",
        "/dev/disk/by-id/usb-Generic_Flash_Disk_12345678-0:0",
        "/dev/disk/by-path/pci-0000:00:04.0",
        "/dev/disk/by-path/pci-0000:00:1f.2-ata-1.0",
    ],
)
def test_check_device_takes_by_id_and_by_path_names(device: str) -> None:
    assert check_device(device) == device


@pytest.mark.parametrize(
    "device",
    [
        "/dev/sda",
        "/dev/vdb",
        "/dev/nvme0n1",
        "/dev/sdb1",
        "sda",
        "vdb",
        "disk/by-id/virtio-lab-disk0",  # relative
        "dev/disk/by-id/virtio-lab-disk0",
        "./virtio-lab-disk0",
        "",
        "/dev/disk/by-id/",
        "/dev/disk/by-uuid/0b6c1a52-3f0e-4d3c-9a55-0d3c0e0f7e61",
        "/dev/disk/by-label/provisioner-cache",
        "/dev/disk/by-id/virtio lab disk0",
        "/dev/disk/by-id/virtio-lab-disk0;reboot",
        "/dev/disk/by-id/$(reboot)",
        "/dev/disk/by-id/`reboot`",
        "/dev/disk/by-id/a|b",
        "/dev/disk/by-id/a&&b",
        "/dev/disk/by-id/a>b",
        "/dev/disk/by-id/'a'",
        '/dev/disk/by-id/"a"',
        "/dev/disk/by-id/../../sda",
        "/dev/disk/by-path/../by-id/x",
        "/dev/disk/by-id/x/../../../sda",
        "/dev/disk/by-id/virtio-lab-disk0\n/dev/sda",
    ],
)
def test_check_device_refuses_other_names_saying_by_id(device: str) -> None:
    with pytest.raises(UsageError, match="by-id") as raised:
        check_device(device)
    assert repr(device) in str(raised.value)


@pytest.mark.parametrize(
    "device",
    ["/dev/disk/by-id/..", "/dev/disk/by-id/.", "/dev/disk/by-id/virtio-lab-disk0\n"],
)
def test_check_device_refuses_dot_names_and_a_trailing_newline(device: str) -> None:
    with pytest.raises(UsageError, match="by-id"):
        check_device(device)


# ------------------------------------------------------------------ judge


def test_a_blank_disk_is_blank_with_its_size() -> None:
    assert judged(LSBLK_BLANK, WIPEFS_NONE) == Verdict("blank", "64.0 GiB, blank")
    assert judge(json.loads(LSBLK_BLANK), {}).kind == "blank"  # wipefs said nothing
    odd = judge(disk(size=500107862016), {"signatures": []})  # a "500 GB" disk
    assert odd == Verdict("blank", "465.8 GiB, blank")


@pytest.mark.parametrize(
    ("mountpoint", "mounted"),
    [(MOUNT, True), (None, False), ("/mnt", False), (MOUNT + "/models", False)],
)
def test_our_own_disk_is_ours_mounted_only_on_the_cache(
    mountpoint: str | None, mounted: bool
) -> None:
    verdict = judged(ours(mountpoint), WIPEFS_GPT)
    assert verdict.kind == "ours"
    assert verdict.mounted is mounted
    assert verdict.what.startswith("64.0 GiB")


def test_a_dos_disk_is_foreign_and_named_with_its_partitions() -> None:
    verdict = judged(LSBLK_DOS, WIPEFS_DOS)
    assert verdict.kind == "foreign" and not verdict.mounted
    assert "dos partition table" in verdict.what
    assert "vdb1 ext4" in verdict.what and "vdb2 xfs" in verdict.what
    assert "2 partition(s)" in verdict.what and "signatures dos" in verdict.what
    assert verdict.what.startswith("64.0 GiB, ")


def test_a_mounted_partition_is_named_with_its_mountpoint() -> None:
    lsblk = disk(pttype="gpt", children=[part("vdb1", fstype="ext4", mountpoint="/srv")])
    verdict = judge(lsblk, signatures("gpt", "PMBR"))
    assert verdict.kind == "foreign" and "vdb1 ext4 on /srv" in verdict.what


def test_a_filesystem_on_the_whole_disk_is_foreign() -> None:
    verdict = judge(disk(fstype="xfs", label="data"), signatures("xfs"))
    assert verdict.kind == "foreign"
    assert "xfs filesystem on the whole disk" in verdict.what
    assert "partition table" not in verdict.what
    # lsblk's probe alone is enough (wipefs said nothing)
    assert judge(disk(fstype="ext4"), {"signatures": []}).kind == "foreign"


@pytest.mark.parametrize("signature", ["linux_raid_member", "LVM2_member", "crypto_LUKS"])
def test_a_signature_alone_makes_a_disk_foreign(signature: str) -> None:
    verdict = judge(disk(), signatures(signature))
    assert verdict.kind == "foreign"
    assert f"signatures {signature}" in verdict.what


def test_an_empty_partition_table_is_foreign() -> None:
    verdict = judge(disk(pttype="gpt"), signatures("gpt", "gpt", "PMBR"))
    assert verdict.kind == "foreign" and "gpt partition table" in verdict.what


@pytest.mark.parametrize(
    "child",
    [
        part("vdb1", partlabel="data", label="data", fstype="ext4"),
        part("vdb1", partlabel="data", label=FS_LABEL, fstype="ext4"),
        part("vdb1", partlabel=PART_NAME, label="data", fstype="ext4"),
        part("vdb1", partlabel=PART_NAME, label=FS_LABEL, fstype="xfs"),
        part("vdb1", partlabel=PART_NAME, label=None, fstype=None),  # format stopped at mkfs
    ],
)
def test_a_gpt_partition_not_quite_ours_is_foreign(child: dict[str, Any]) -> None:
    verdict = judge(disk(pttype="gpt", children=[child]), signatures("gpt", "gpt", "PMBR"))
    assert verdict.kind == "foreign" and not verdict.mounted
    assert "gpt partition table" in verdict.what and "vdb1" in verdict.what


def test_our_partition_beside_another_is_foreign() -> None:
    mine = part("vdb1", partlabel=PART_NAME, label=FS_LABEL, fstype="ext4", mountpoint=MOUNT)
    other = part("vdb2", fstype="swap")
    verdict = judge(disk(pttype="gpt", children=[mine, other]), signatures("gpt", "PMBR"))
    assert verdict.kind == "foreign" and "vdb2 swap" in verdict.what


def test_ours_on_a_dos_table_is_foreign() -> None:
    mine = part("vdb1", pttype="dos", label=FS_LABEL, fstype="ext4", partlabel=PART_NAME)
    assert judge(disk(pttype="dos", children=[mine]), signatures("dos")).kind == "foreign"


@pytest.mark.parametrize("kind", ["part", "rom", "lvm", "crypt"])
def test_what_is_not_a_whole_disk_is_not_a_disk(kind: str) -> None:
    verdict = judge(disk(name="vdb1", type=kind), {"signatures": []})
    assert verdict.kind == "not-a-disk" and kind in verdict.what


def test_a_blank_loop_device_is_a_disk_a_lab_container_can_take() -> None:
    assert judge(disk(name="loop3", type="loop"), {"signatures": []}).kind == "blank"


def test_a_loop_device_with_an_image_on_it_is_foreign() -> None:
    verdict = judge(disk(name="loop0", type="loop", fstype="squashfs"), signatures("squashfs"))
    assert verdict.kind == "foreign" and "squashfs" in verdict.what


def test_our_own_partition_named_instead_of_its_disk_is_not_a_disk() -> None:
    lsblk = {"blockdevices": [part("vdb1", partlabel=PART_NAME, label=FS_LABEL, fstype="ext4")]}
    assert judge(lsblk, signatures("ext4")).kind == "not-a-disk"


@pytest.mark.parametrize("lsblk", [{"blockdevices": []}, {}, {"blockdevices": None}])
def test_nothing_listed_is_not_a_disk(lsblk: dict[str, Any]) -> None:
    assert judge(lsblk, {"signatures": []}).kind == "not-a-disk"


# ------------------------------------------------------------------ parse_inspection


def test_parse_inspection_splits_at_the_dashes() -> None:
    got = parse_inspection(inspection(LSBLK_DOS, WIPEFS_DOS))
    assert got == (json.loads(LSBLK_DOS), json.loads(WIPEFS_DOS))
    assert judge(*got).kind == "foreign"
    assert parse_inspection(inspection(ours(MOUNT), WIPEFS_GPT))[1]["signatures"][2] == {
        "device": "vdb",
        "offset": "0x1fe",
        "type": "PMBR",
        "uuid": None,
        "label": None,
    }


def test_parse_inspection_without_wipefs_output_is_no_signature() -> None:
    assert parse_inspection(LSBLK_BLANK + "--\n") == (json.loads(LSBLK_BLANK), {})
    assert parse_inspection(inspection(LSBLK_BLANK, '{"signatures": []}\n'))[1] == {
        "signatures": []
    }
    assert judge(*parse_inspection(LSBLK_BLANK + "--\n")).kind == "blank"


@pytest.mark.parametrize(
    "output",
    [
        "",
        "lsblk: /dev/vdb: not a block device\n",
        "not json\n--\n{}\n",
        LSBLK_BLANK + "--\nwipefs: error: /dev/vdb: probing initialization failed\n",
        LSBLK_BLANK[:40] + "\n--\n" + WIPEFS_NONE,
        "--\n" + WIPEFS_NONE,
    ],
)
def test_parse_inspection_of_garbage_is_a_provisioner_error(output: str) -> None:
    with pytest.raises(ProvisionerError, match="lsblk/wipefs"):
        parse_inspection(output)


# ------------------------------------------------------------------ the commands


def test_the_commands_quote_the_device_and_use_its_first_partition() -> None:
    assert inspect_command(DEVICE).startswith(f"set -e; dev=$(readlink -f {DEVICE}); ")
    assert "lsblk -J -b -o NAME,TYPE,SIZE,PTTYPE,PARTLABEL,LABEL,FSTYPE,MOUNTPOINT" in (
        inspect_command(DEVICE)
    )
    assert 'echo "--"; wipefs -n -J "$dev"' in inspect_command(DEVICE)
    mount = mount_command(DEVICE)
    assert mount.startswith(f"mountpoint -q {MOUNT} || {{ ")
    assert mount.endswith(f"mkdir -p {MOUNT} && mount -o nodev,nosuid {DEVICE}-part1 {MOUNT}; }}")
    assert f"while [ ! -b {DEVICE}-part1 ] && [ $i -lt 100 ]" in mount  # udev's moment
    fmt = format_command(DEVICE)
    assert fmt.endswith(mount) and f"mkfs.ext4 -q -F -L {FS_LABEL} " in fmt
    assert "sfdisk --quiet --wipe always" in fmt
    assert fmt.index("sfdisk") < fmt.index('partx -u "$dev"') < fmt.index("lsblk -lnpo")
    odd = "/dev/disk/by-path/pci-0000:00:04.0"
    assert f"readlink -f {odd})" in format_command(odd)


# ------------------------------------------------------------------ init_cache_disk


@dataclass
class FakeSite:
    """What init_cache_disk asks of a Site: its registry, and a connection to the node."""

    registry: Registry
    machine: FakeNode
    opened: list[str] = field(default_factory=list)

    def connect(self, node: Node) -> FakeConnection:
        self.opened.append(node.mac)
        return self.machine.connect()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry.db")
    yield reg
    reg.close()


@pytest.fixture
def node(registry: Registry) -> Node:
    registry.touch_node(MAC, ip="10.30.0.101")
    return registry.set_hostname(MAC, "labnode1")


def fake_site(
    registry: Registry, answer: str, *, exit_status: int = 0, device: str = DEVICE
) -> FakeSite:
    """A node that answers the inspection of ``device`` with ``answer``, and 0 to the rest."""
    machine = FakeNode("labnode1")
    machine.on(inspect_command(device), stdout=answer, exit_status=exit_status)
    return FakeSite(registry, machine)


def disk_events(registry: Registry) -> list[dict[str, Any]]:
    return [dict(e.detail) for e in registry.events(MAC) if e.kind is EventKind.DISK]


@pytest.mark.parametrize("yes", [False, True])
@pytest.mark.parametrize(
    ("lsblk", "wipefs"),
    [
        (LSBLK_DOS, WIPEFS_DOS),
        (printed(disk(fstype="xfs")), printed(signatures("xfs"))),
        (printed(disk()), printed(signatures("linux_raid_member"))),
    ],
)
def test_a_foreign_disk_is_refused_whatever_the_flags(
    registry: Registry, node: Node, lsblk: str, wipefs: str, yes: bool
) -> None:
    site = fake_site(registry, inspection(lsblk, wipefs))
    with pytest.raises(DiskRefused, match="refused, nothing written") as raised:
        init_cache_disk(cast(Site, site), node, DEVICE, yes=yes)
    assert isinstance(raised.value, Refused)
    assert "labnode1" in str(raised.value) and DEVICE in str(raised.value)
    assert site.machine.commands == [inspect_command(DEVICE)]
    assert site.machine.puts == []
    assert registry.cache_disk(MAC) is None
    (event,) = disk_events(registry)
    assert event["action"] == "refused" and event["device"] == DEVICE
    assert event["what"] == judged(lsblk, wipefs).what


def test_a_dos_disk_is_refused_naming_its_table(registry: Registry, node: Node) -> None:
    site = fake_site(registry, inspection(LSBLK_DOS, WIPEFS_DOS))
    with pytest.raises(DiskRefused, match="dos partition table"):
        init_cache_disk(cast(Site, site), node, DEVICE, yes=True)


def test_a_partition_is_refused(registry: Registry, node: Node) -> None:
    lsblk = {"blockdevices": [part("vdb1", partlabel=PART_NAME, label=FS_LABEL, fstype="ext4")]}
    site = fake_site(registry, inspection(printed(lsblk), WIPEFS_NONE), device=DEVICE + "-part1")
    with pytest.raises(DiskRefused, match="not a whole disk"):
        init_cache_disk(cast(Site, site), node, DEVICE + "-part1", yes=True)
    # its own inspect command (the -part1 name), nothing else
    assert site.machine.commands == [inspect_command(DEVICE + "-part1")]
    assert registry.cache_disk(MAC) is None
    assert [e["action"] for e in disk_events(registry)] == ["refused"]


def test_a_blank_disk_without_yes_is_refused_naming_yes(registry: Registry, node: Node) -> None:
    site = fake_site(registry, inspection(LSBLK_BLANK, WIPEFS_NONE))
    with pytest.raises(DiskRefused, match="--yes") as raised:
        init_cache_disk(cast(Site, site), node, DEVICE, yes=False)
    assert "64.0 GiB, blank" in str(raised.value) and MOUNT in str(raised.value)
    assert site.machine.commands == [inspect_command(DEVICE)]
    assert registry.cache_disk(MAC) is None
    assert disk_events(registry) == []


def test_a_blank_disk_with_yes_is_formatted(registry: Registry, node: Node) -> None:
    site = fake_site(registry, inspection(LSBLK_BLANK, WIPEFS_NONE))
    result = init_cache_disk(cast(Site, site), node, DEVICE, yes=True)
    assert site.machine.commands == [inspect_command(DEVICE), format_command(DEVICE)]
    assert result.as_dict() == {
        "node": "labnode1",
        "device": DEVICE,
        "action": "formatted",
        "what": "64.0 GiB, blank",
    }
    assert registry.cache_disk(MAC) == DEVICE
    assert disk_events(registry) == [
        {"device": DEVICE, "action": "formatted", "what": "64.0 GiB, blank"}
    ]
    assert site.opened == [MAC] and all(c.closed for c in site.machine.connections)


def test_our_disk_unmounted_is_mounted(registry: Registry, node: Node) -> None:
    site = fake_site(registry, inspection(ours(None), WIPEFS_GPT))
    result = init_cache_disk(cast(Site, site), node, DEVICE, yes=False)
    assert result.action == "mounted"
    assert site.machine.commands == [inspect_command(DEVICE), mount_command(DEVICE)]
    assert not any("sfdisk" in c or "mkfs" in c for c in site.machine.commands)
    assert registry.cache_disk(MAC) == DEVICE
    assert [e["action"] for e in disk_events(registry)] == ["mounted"]


@pytest.mark.parametrize("yes", [False, True])
def test_our_disk_mounted_is_left_as_it_is(registry: Registry, node: Node, yes: bool) -> None:
    site = fake_site(registry, inspection(ours(MOUNT), WIPEFS_GPT))
    result = init_cache_disk(cast(Site, site), node, DEVICE, yes=yes)
    assert result.action == "unchanged" and result.node == "labnode1"
    assert site.machine.commands == [inspect_command(DEVICE)]
    assert registry.cache_disk(MAC) == DEVICE
    assert [e["action"] for e in disk_events(registry)] == ["unchanged"]


def test_a_failed_inspection_is_refused(registry: Registry, node: Node) -> None:
    machine = FakeNode("labnode1")
    machine.on(
        inspect_command(DEVICE),
        stderr="lsblk: /dev/disk/by-id/virtio-lab-disk0: not a block device\n",
        exit_status=1,
    )
    site = FakeSite(registry, machine)
    with pytest.raises(DiskRefused, match="not a block device"):
        init_cache_disk(cast(Site, site), node, DEVICE, yes=True)
    assert machine.commands == [inspect_command(DEVICE)]
    assert registry.cache_disk(MAC) is None


def test_a_failed_inspection_without_output_says_no_such_disk(
    registry: Registry, node: Node
) -> None:
    site = fake_site(registry, "", exit_status=1)
    with pytest.raises(DiskRefused, match="no such disk"):
        init_cache_disk(cast(Site, site), node, DEVICE, yes=True)
    assert site.machine.commands == [inspect_command(DEVICE)]


def test_garbled_inspection_output_writes_nothing(registry: Registry, node: Node) -> None:
    site = fake_site(registry, "Segmentation fault\n")
    with pytest.raises(ProvisionerError, match="lsblk/wipefs"):
        init_cache_disk(cast(Site, site), node, DEVICE, yes=True)
    assert site.machine.commands == [inspect_command(DEVICE)]
    assert registry.cache_disk(MAC) is None


def test_a_failed_format_is_an_error_and_records_no_disk(registry: Registry, node: Node) -> None:
    site = fake_site(registry, inspection(LSBLK_BLANK, WIPEFS_NONE))
    site.machine.on(format_command(DEVICE), stderr="mkfs.ext4: no such device\n", exit_status=1)
    with pytest.raises(ProvisionerError, match="no such device") as raised:
        init_cache_disk(cast(Site, site), node, DEVICE, yes=True)
    assert not isinstance(raised.value, DiskRefused)
    assert "labnode1" in str(raised.value) and DEVICE in str(raised.value)
    assert registry.cache_disk(MAC) is None
    assert disk_events(registry) == []


def test_a_failed_format_says_format_failed(registry: Registry, node: Node) -> None:
    site = fake_site(registry, inspection(LSBLK_BLANK, WIPEFS_NONE))
    site.machine.on(format_command(DEVICE), stderr="mkfs.ext4: no such device\n", exit_status=1)
    with pytest.raises(ProvisionerError, match=r"format failed"):
        init_cache_disk(cast(Site, site), node, DEVICE, yes=True)


def test_a_failed_mount_says_mount_failed(registry: Registry, node: Node) -> None:
    site = fake_site(registry, inspection(ours(None), WIPEFS_GPT))
    site.machine.on(mount_command(DEVICE), stderr="mount: wrong fs type\n", exit_status=32)
    with pytest.raises(ProvisionerError, match=r"mount failed: mount: wrong fs type"):
        init_cache_disk(cast(Site, site), node, DEVICE, yes=False)
    assert registry.cache_disk(MAC) is None


@pytest.mark.parametrize("device", ["/dev/vdb", "/dev/sda", "/dev/nvme0n1", "vdb"])
def test_a_kernel_name_is_a_usage_error_before_any_connection(
    registry: Registry, node: Node, device: str
) -> None:
    site = fake_site(registry, inspection(LSBLK_BLANK, WIPEFS_NONE))
    with pytest.raises(UsageError, match="by-id"):
        init_cache_disk(cast(Site, site), node, device, yes=True)
    assert site.opened == [] and site.machine.log == []
    assert registry.cache_disk(MAC) is None and disk_events(registry) == []


# ------------------------------------------------------------------ the real tools


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        unavailable(f"needs {name} (scripts/setup installs fdisk and e2fsprogs)")
    return found


def format_line(starting: str) -> str:
    """The one ``; ``-separated command of format_command that starts with ``starting``."""
    (line,) = [c for c in format_command(DEVICE).split("; ") if c.startswith(starting)]
    return line


def run_line(line: str, **env: str) -> subprocess.CompletedProcess[str]:
    path = "/usr/sbin:/sbin:/usr/bin:/bin"
    return subprocess.run(
        ["sh", "-c", line], env={"PATH": path, **env}, capture_output=True, text=True, timeout=60
    )


def test_the_sfdisk_script_makes_our_gpt_partition(tmp_path: Path) -> None:
    sfdisk = tool("sfdisk")
    image = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    line = format_line("printf ")
    assert '| sfdisk --quiet --wipe always "$dev"' in line
    done = run_line(line, dev=str(image))
    assert done.returncode == 0, done.stderr
    dump = subprocess.run([sfdisk, "-d", str(image)], capture_output=True, text=True, check=True)
    assert "label: gpt" in dump.stdout
    (partition,) = [p for p in dump.stdout.splitlines() if p.startswith(f"{image}1 :")]
    assert f'name="{PART_NAME}"' in partition
    assert "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4" in partition  # Linux filesystem


def test_mkfs_writes_the_label_judge_looks_for(tmp_path: Path) -> None:
    tool("mkfs.ext4")
    blkid = tool("blkid")
    image = tmp_path / "part.img"
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    done = run_line(format_line("mkfs.ext4 "), part=str(image))
    assert done.returncode == 0, done.stderr
    label = subprocess.run(
        [blkid, "-p", "-o", "value", "-s", "LABEL", str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    lsblk = disk(
        pttype="gpt", children=[part("vdb1", partlabel=PART_NAME, label=label, fstype="ext4")]
    )
    assert judge(lsblk, signatures("gpt", "gpt", "PMBR")).kind == "ours"


def test_the_label_fits_an_ext4_volume_label() -> None:
    assert len(FS_LABEL.encode()) <= 16
