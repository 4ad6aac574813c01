"""Every real dump in ../shared/fixtures/hw parses as its labelled format, with its labelled
accelerators; messy and broken input never raises."""

from __future__ import annotations

import csv

import pytest

from provisioner.discovery import pciids
from provisioner.discovery.accelerators import accelerators, summary
from provisioner.discovery.dumps import FORMATS, parse_as, parse_dump
from tests.shared_fixtures import HW, LABELS
from tests.shared_fixtures import needs_hw as needs_fixtures

needs_pci_ids = pytest.mark.skipif(
    not pciids.default(), reason="no pci.ids installed (Debian package 'pci.ids')"
)


def _labels() -> list[dict[str, str]]:
    if not LABELS.is_file():
        return []
    with LABELS.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _expected(text: str) -> dict[str, int]:
    if text.strip() == "none":
        return {}
    out: dict[str, int] = {}
    for part in text.split(","):
        slug, _, count = part.strip().rpartition(" x")
        out[slug] = int(count)
    return out


ROWS = _labels()
IDS = [row["file"].split("__")[0] + "/" + row["file"].split("__")[1] for row in ROWS]


def _read(name: str) -> str:
    return (HW / name).read_text(encoding="utf-8", errors="replace")


@needs_fixtures
def test_every_fixture_file_is_labelled() -> None:
    files = {p.name for p in HW.iterdir() if p.name not in ("SOURCES.md", "labels.tsv")}
    assert files == {row["file"] for row in ROWS}


@needs_fixtures
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_fixture_is_detected_as_labelled(row: dict[str, str]) -> None:
    expected = "inxi" if row["format"] == "other" else row["format"]
    result = parse_dump(_read(row["file"]))
    assert result.format == expected
    assert result.inventory.partial is (row["partial"] == "yes"), result.inventory.problems


@needs_fixtures
@needs_pci_ids
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_fixture_yields_labelled_accelerators(row: dict[str, str]) -> None:
    inventory = parse_dump(_read(row["file"])).inventory
    assert summary(accelerators(inventory)) == _expected(row["accelerators"])


@needs_fixtures
@pytest.mark.parametrize(
    "row", [r for r in ROWS if r["pci_ids"] != "-"], ids=lambda r: r["file"][:40]
)
def test_fixture_ids_are_read(row: dict[str, str]) -> None:
    inventory = parse_dump(_read(row["file"])).inventory
    seen = {d.ids for d in inventory.pci}
    assert set(row["pci_ids"].split(",")) <= seen


@needs_fixtures
def test_krackan_npu_keeps_its_revision_and_family() -> None:
    name = next(r["file"] for r in ROWS if r["file"].startswith("krackan"))
    inventory = parse_dump(_read(name)).inventory
    npu = next(d for d in inventory.pci if d.ids == "1022:17f0")
    assert (npu.revision, npu.pci_class, npu.address) == ("20", "1180", "05:00.1")
    [found] = accelerators(inventory)
    assert found.family == "XDNA2 NPU6 (Krackan Point)"


@needs_fixtures
def test_lspci_nnk_reads_subsystem_and_driver_through_wiki_indent() -> None:
    name = next(r["file"] for r in ROWS if r["file"].startswith("phoenix"))
    result = parse_dump(_read(name))
    gpu = next(d for d in result.inventory.pci if d.ids == "10de:28b8")
    assert (gpu.address, gpu.pci_class, gpu.revision, gpu.driver) == (
        "01:00.0",
        "0302",
        "a1",
        "nvidia",
    )
    assert (gpu.subsystem_vendor, gpu.subsystem_device) == ("17aa", "231d")
    assert any("pcilib" in p for p in result.inventory.problems)


@needs_fixtures
def test_dmidecode_and_cpuinfo_fields() -> None:
    dell = parse_dump(_read(next(r["file"] for r in ROWS if "dell-r640" in r["file"]))).inventory
    assert (dell.dmi.system_vendor, dell.dmi.system_product, dell.dmi.board_name) == (
        "Dell Inc.",
        "PowerEdge R640",
        "06NR82",
    )
    assert dell.cpu is not None and dell.cpu.sockets == 2
    cpuinfo = parse_dump(_read(next(r["file"] for r in ROWS if "cpuinfo" in r["file"]))).inventory
    assert cpuinfo.cpu is not None and cpuinfo.cpu.vendor == "GenuineIntel"
    assert cpuinfo.partial and any("3 of 4" in p for p in cpuinfo.problems)


@needs_fixtures
def test_german_lshw_reads_dmi_and_cpu() -> None:
    name = next(r["file"] for r in ROWS if "german" in r["file"])
    inventory = parse_dump(_read(name)).inventory
    assert inventory.hostname == "client23"
    assert inventory.dmi.board_name == "H110M PRO-VD (MS-7996)"
    assert inventory.cpu is not None and inventory.cpu.threads == 8
    assert inventory.memory_bytes == 16 * 1024**3


@needs_fixtures
def test_truncated_nvidia_xml_is_partial_not_an_error() -> None:
    name = next(r["file"] for r in ROWS if r["file"].startswith("rtx2070"))
    text = _read(name)
    result = parse_dump(text[: len(text) // 3])
    assert result.format == "nvidia-smi-q-x"
    assert result.inventory.partial
    assert result.inventory.pci and result.inventory.pci[0].ids == "10de:1f02"


@needs_fixtures
def test_truncated_lshw_json_keeps_what_was_complete() -> None:
    name = next(r["file"] for r in ROWS if r["format"] == "lshw-json")
    text = _read(name)
    result = parse_dump(text[: len(text) // 2])
    assert result.format == "lshw-json"
    assert result.inventory.partial
    assert result.inventory.dmi.system_product == "LIFEBOOK E782"


# Messy input, no fixtures needed.

NNK = (
    "user@box:~$ lspci -nnk\n"
    "pcilib: Cannot open /proc/bus/pci\n"
    "01:00.0 VGA compatible controller [0300]: NVIDIA Corporation GA102 [GeForce RTX 3090]\n"
    "[10de:2204] (rev a1)\n"
    "\tSubsystem: NVIDIA Corporation Device [10de:147d]\n"
    "\tKernel driver in use: nvidia\n"
    "02:00.0 3D controller [0302]: NVIDIA Corporation GV100GL [Tesla V100S PCIe 32GB] [10de:1df6]\n"
    "   \n"
)


def test_prompt_stderr_and_wrapped_line() -> None:
    result = parse_dump(NNK)
    assert result.format == "lspci-nnk"
    gpu, v100s = result.inventory.pci
    assert (gpu.ids, gpu.revision, gpu.driver, gpu.subsystem_device) == (
        "10de:2204",
        "a1",
        "nvidia",
        "147d",
    )
    assert v100s.ids == "10de:1df6"
    assert len(result.inventory.problems) == 2  # the prompt and the pcilib line, named


@needs_pci_ids
def test_grep_that_kept_only_the_gpus() -> None:
    text = "\n".join(NNK.splitlines()[2:4] + NNK.splitlines()[6:7])
    found = summary(accelerators(parse_dump(text).inventory))
    assert found == {"nvidia-rtx-3090": 1, "nvidia-v100s-pcie-32gb": 1}


def test_lspci_vmmnn() -> None:
    text = (
        "Slot:\t3b:00.0\nClass:\t3D controller [0302]\nVendor:\tNVIDIA Corporation [10de]\n"
        "Device:\tGV100GL [Tesla V100 PCIe 32GB] [1db6]\nSVendor:\tNVIDIA Corporation [10de]\n"
        "SDevice:\tDevice [124a]\nRev:\ta1\nDriver:\tnvidia\nNUMANode:\t0\n\n"
        "Slot:\t00:02.0\nClass:\tVGA compatible controller [0300]\n"
        "Vendor:\tIntel Corporation [8086]\n"
        "Device:\tHD Graphics 530 [1912]\nRev:\t06\n"
    )
    result = parse_dump(text)
    assert result.format == "lspci-vmmnn"
    v100, igpu = result.inventory.pci
    assert (v100.ids, v100.pci_class, v100.numa_node, v100.subsystem_device) == (
        "10de:1db6",
        "0302",
        0,
        "124a",
    )
    assert igpu.ids == "8086:1912"


def test_nvidia_smi_list() -> None:
    text = "GPU 0: Tesla P40 (UUID: GPU-1)\nGPU 1: Tesla P40 (UUID: GPU-2)\n"
    result = parse_dump(text)
    assert result.format == "nvidia-smi-L"
    assert [d.device_name for d in result.inventory.pci] == ["Tesla P40", "Tesla P40"]


def test_clinfo_list_form() -> None:
    text = (
        "Platform #0: Intel(R) OpenCL Graphics\n `-- Device #0: Intel(R) Arc(TM) A750 Graphics\n"
        "Platform #1: Intel(R) OpenCL\n `-- Device #0: 12th Gen Intel(R) Core(TM) i5-12400\n"
    )
    result = parse_dump(text)
    assert result.format == "clinfo"
    assert result.inventory.pci[0].device_name == "Intel(R) Arc(TM) A750 Graphics"


def test_agent_report_is_converted() -> None:
    text = (
        "==> agent <==\nversion=1\n==> system <==\nfirmware=uefi\nkernel=6.1.0\n"
        "==> pci 0000:01:00.0 <==\nvendor=0x8086\ndevice=0x56a0\nclass=0x030000\ndriver=i915\n"
    )
    result = parse_dump(text)
    assert result.format == "agent"
    [gpu] = result.inventory.pci
    assert (gpu.ids, gpu.pci_class, gpu.prog_if, gpu.driver) == ("8086:56a0", "0300", "00", "i915")
    assert result.inventory.firmware == "uefi"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\n",
        "\x00\x01\x02\xff\xfe binary junk \x89PNG\r\n\x1a\n",
        "hello, this is not a dump",
        "<?xml version='1.0'?><nvidia_smi_log><attached_gpus>2</attached_gpus><gpu id=",
        '[{"id": "host", "class": "system", "children": [{"id": "core", "cl',
        "<list><node id='x' class='system'><node id='display' class='display'><product>",
        "Handle 0x0001, DMI type 1, 27 bytes\nSystem Information\n\tManufacturer",
        "processor : 0\nflags : fpu\n",
        "01:00.0 VGA compatible controller [0300]: \n",
        "==> pci x <==\nvendor=zz\n==> block <==\n",
        "[level_zero:gpu][level_zero:0]",
        "*-display\n*-cpu\n   product:",
        "|   0  NVIDIA GeForce RTX 3050        Off |   00000000:01:00.0  On |\nNVIDIA-SMI\n|\n|",
    ],
)
def test_broken_input_never_raises(text: str) -> None:
    result = parse_dump(text)
    assert result.format in (None, *FORMATS)
    summary(accelerators(result.inventory))


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_parser_survives_junk(fmt: str) -> None:
    for junk in ("", "\x00\xff" * 50, "a: b\n" * 20, "{[<" * 30):
        parse_as(fmt, junk)


def test_unknown_format_names_the_known_ones() -> None:
    result = parse_dump("just some words\nand more words\n")
    assert result.format is None
    assert result.inventory.partial
    [problem] = result.inventory.problems
    assert "unknown format" in problem
    assert all(fmt in problem for fmt in FORMATS)


LSHW_XML = """<?xml version="1.0" standalone="yes" ?>
<!-- generated by lshw-B.02.19.2 -->
<list>
<node id="node3" claimed="true" class="system" handle="DMI:0001">
 <description>Rack Mount Chassis</description>
 <product>PowerEdge R740 (SKU=0715;ModelName=PowerEdge R740)</product>
 <vendor>Dell Inc.</vendor>
 <serial>ABC1234</serial>
  <node id="core" claimed="true" class="bus" handle="DMI:0002">
   <product>014X06</product>
   <vendor>Dell Inc.</vendor>
    <node id="memory" claimed="true" class="memory" handle="DMI:1000">
     <description>System Memory</description>
     <size units="bytes">68719476736</size>
    </node>
    <node id="display" claimed="true" class="display" handle="PCI:0000:3b:00.0">
     <description>3D controller</description>
     <product>GV100GL [Tesla V100S PCIe 32GB]</product>
     <vendor>NVIDIA Corporation</vendor>
     <businfo>pci@0000:3b:00.0</businfo>
     <version>a1</version>
     <configuration>
      <setting id="driver" value="nvidia" />
     </configuration>
    </node>
  </node>
</node>
</list>
"""


@needs_pci_ids
def test_lshw_xml() -> None:
    result = parse_dump(LSHW_XML)
    assert result.format == "lshw-xml"
    inv = result.inventory
    assert (inv.dmi.system_vendor, inv.dmi.board_name, inv.memory_bytes) == (
        "Dell Inc.",
        "014X06",
        64 * 1024**3,
    )
    [gpu] = inv.pci
    assert (gpu.address, gpu.pci_class, gpu.driver) == ("0000:3b:00.0", "0302", "nvidia")
    assert summary(accelerators(inv)) == {"nvidia-v100s-pcie-32gb": 1}
    truncated = parse_dump(LSHW_XML[: LSHW_XML.index("<version>")])
    assert truncated.format == "lshw-xml" and truncated.inventory.partial


CLINFO_LONG = """Number of platforms                               1
  Platform Name                                   Intel(R) OpenCL Graphics
  Platform Vendor                                 Intel(R) Corporation
Number of devices                                 2
  Device Name                                     Intel(R) Arc(TM) A770 Graphics
  Device Vendor                                   Intel(R) Corporation
  Device Vendor ID                                0x8086
  Device Type                                     GPU
  Device PCI bus info (KHR)                       PCI-E, 0000:03:00.0
  Device Name                                     Intel(R) Arc(TM) A770 Graphics
  Device Vendor ID                                0x8086
  Device Type                                     GPU
  Device PCI bus info (KHR)                       PCI-E, 0000:07:00.0
"""


@needs_pci_ids
def test_clinfo_long_form_counts_by_bus() -> None:
    result = parse_dump(CLINFO_LONG)
    assert result.format == "clinfo"
    assert [d.address for d in result.inventory.pci] == ["03:00.0", "07:00.0"]
    assert summary(accelerators(result.inventory)) == {"intel-arc-a770": 2}


@needs_fixtures
def test_inxi_fields() -> None:
    inv = parse_dump(_read(next(r["file"] for r in ROWS if r["format"] == "other"))).inventory
    assert inv.cpu is not None and inv.cpu.model_name == "AMD Ryzen 5 4600G with Radeon Graphics"
    assert "avx2" in inv.cpu.flags
    assert (inv.kernel, inv.firmware, inv.dmi.bios_version) == (
        "6.5.6-76060506-generic",
        "uefi",
        "F3d",
    )
    p40 = inv.pci[0]
    assert (p40.address, p40.driver, p40.device_name) == (
        "01:00.0",
        "nvidia",
        "NVIDIA GP102GL [Tesla P40]",
    )
    assert p40.ids is None  # inxi -Fxz prints no ids; none are invented


@needs_fixtures
def test_nvidia_smi_q_reads_ids_from_device_id() -> None:
    inv = parse_dump(
        _read(next(r["file"] for r in ROWS if r["format"] == "nvidia-smi-q"))
    ).inventory
    [gpu] = inv.pci
    assert (gpu.ids, gpu.subsystem_vendor, gpu.subsystem_device) == ("10de:2684", "1028", "5101")
    assert (gpu.address, gpu.device_name) == ("00000000:01:00.0", "NVIDIA GeForce RTX 4090")
