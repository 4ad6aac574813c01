"""Mixed pastes: sectioning (provisioner.discovery.dumps.sections), merging the views
(merge), and parse_dump over texts that hold several tools' output. Pure, no fixtures."""

from __future__ import annotations

from provisioner.discovery import pciids
from provisioner.discovery.dumps import parse_dump
from provisioner.discovery.dumps.merge import merge_pci, short_address
from provisioner.discovery.dumps.sections import carried_lines, split
from provisioner.discovery.model import PciDevice

SMI_TABLE = """\
Mon Mar 23 02:26:48 2020
+-----------------------------------------------------------------------------+
| NVIDIA-SMI 440.64.00    Driver Version: 440.64.00    CUDA Version: 10.2     |
|-------------------------------+----------------------+----------------------+
| GPU  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncorr. ECC |
| Fan  Temp  Perf  Pwr:Usage/Cap|         Memory-Usage | GPU-Util  Compute M. |
|===============================+======================+======================|
|   0  Tesla V100S-PCI...  On   | 00000000:3B:00.0 Off |                    0 |
| N/A   31C    P0    37W / 250W |      0MiB / 32510MiB |      0%      Default |
+-------------------------------+----------------------+----------------------+
"""

MIXED = (
    "$ python env_check.py\n"
    "Python 3.11.2\n"
    "torch==2.3.0\n"
    "$ lspci | grep -i nvidia\n"
    "3b:00.0 3D controller: NVIDIA Corporation GV100GL [Tesla V100S PCIe 32GB] (rev a1)\n"
    "$ nvidia-smi\n" + SMI_TABLE + "that is all, thanks\n"
)


def test_a_mixed_paste_is_cut_into_its_tools_and_the_rest_is_reported_by_line() -> None:
    cut = split(MIXED)
    assert [(s.family, s.first, s.last) for s in cut.sections] == [
        ("lspci", 5, 5),
        ("nvidia-smi-table", 7, 16),
    ]
    assert [(s.first, s.last) for s in cut.skipped] == [(1, 3), (17, 17)]
    assert "lines 1-3 skipped" in cut.skipped[0].describe()
    assert cut.notes[0] == "skipped shell prompt line '$ lspci | grep -i nvidia'"


def test_the_same_gpu_in_two_tools_counts_once_and_takes_both_views() -> None:
    result = parse_dump(MIXED)
    assert result.format == "lspci-plain+nvidia-smi-table"
    assert [(s.format, s.first, s.last, s.pci_devices) for s in result.sections] == [
        ("lspci-plain", 5, 5, 1),
        ("nvidia-smi-table", 7, 16, 1),
    ]
    (gpu,) = result.inventory.pci
    assert gpu.address == "3b:00.0" and gpu.revision == "a1"  # from lspci
    assert gpu.driver == "nvidia" and gpu.memory_bytes == 32510 * 1024**2  # from nvidia-smi
    assert any("lines 1-3 skipped" in p for p in result.inventory.problems)


def test_mail_quoting_and_a_soft_wrapped_header_are_undone() -> None:
    text = (
        "On Tue, someone wrote:\n"
        "> $ lspci -nn\n"
        "> 01:00.0 VGA compatible controller [0300]: NVIDIA Corporation GA102 [GeForce RTX\n"
        "> 3090] [10de:2204] (rev a1)\n"
        ">> 02:00.0 3D controller [0302]: NVIDIA Corporation Device [10de:1df6]\n"
        "thanks\n"
    )
    result = parse_dump(text)
    assert result.carriers == ("mail quoting '>'",)
    assert [d.ids for d in result.inventory.pci] == ["10de:2204", "10de:1df6"]
    assert result.inventory.pci[0].device_name == "GA102 [GeForce RTX 3090]"


def test_quoted_printable_and_html_are_undone_before_anything_is_read() -> None:
    text = (
        "Content-Transfer-Encoding: quoted-printable\n\n"
        "<pre>&gt; 01:00.0 VGA compatible controller: NVIDIA Corporation TU116M [GeForce GTX=\n"
        " 1660 Mobile] (rev a1)\n"
        "&gt; \tSubsystem: CLEVO/KAPOK Computer Device 8550</pre>\n"
    )
    _, undone = carried_lines(text)
    assert undone == ["quoted-printable", "HTML", "mail quoting '>'"]
    (gpu,) = parse_dump(text).inventory.pci
    assert gpu.device_name == "TU116M [GeForce GTX 1660 Mobile]" and gpu.revision == "a1"


def test_a_commented_block_that_holds_a_table_is_read_and_prose_comments_are_not() -> None:
    text = "# Run nvidia-smi, you get:\n#\n" + "".join(
        f"# {line}\n" for line in SMI_TABLE.split("\n")
    )
    result = parse_dump(text)
    assert result.format == "nvidia-smi-table"
    assert "'#' comments" in result.carriers
    assert result.inventory.pci[0].device_name == "Tesla V100S-PCI..."
    assert parse_dump("# just a comment\n# and another\n").format is None


def test_an_indented_block_and_an_elision_stay_in_one_section() -> None:
    text = (
        "Here is mine:\n\n"
        "    00:02.0 VGA compatible controller [0300]: Intel Corporation Device [8086:56a0]\n"
        "    [...]\n"
        "    03:00.0 VGA compatible controller [0300]: Intel Corporation DG2 [8086:56a0]\n"
    )
    cut = split(text)
    assert [(s.family, s.first, s.last) for s in cut.sections] == [("lspci", 3, 5)]
    assert len(parse_dump(text).inventory.pci) == 2


def test_a_few_unknown_lines_inside_a_tool_stay_with_it() -> None:
    text = (
        "# dmidecode 3.4\n"
        "Getting SMBIOS data from sysfs.\n"
        "SMBIOS 3.3.0 present.\n"
        "Table at 0x7FFFF860.\n\n"
        "Handle 0x0001, DMI type 1, 27 bytes\n"
        "System Information\n"
        "\tManufacturer: Dell Inc.\n"
        "\tProduct Name: PowerEdge R640\n"
    )
    result = parse_dump(text)
    assert [(s.format, s.first, s.last) for s in result.sections] == [("dmidecode", 1, 9)]
    assert result.inventory.dmi.system_product == "PowerEdge R640"


def test_lshw_with_several_top_nodes_and_numeric_ids_in_french() -> None:
    text = (
        "  *-display\n"
        "       description: VGA compatible controller\n"
        "       produit: GA106 [GeForce RTX 3060 Lite Hash Rate] [10DE:2504]\n"
        "       fabricant: NVIDIA Corporation [10DE]\n"
        "       information bus: pci@0000:07:00.0\n"
        "       configuration : depth=32 driver=nvidia latency=0\n"
        "  *-display\n"
        "       description: VGA compatible controller\n"
        "       produit: SVGA II Adapter [15AD:405]\n"
        "       fabricant: VMware [15AD]\n"
        "       information bus: pci@0000:00:0f.0\n"
    )
    nvidia, vmware = parse_dump(text).inventory.pci
    assert (nvidia.ids, nvidia.device_name, nvidia.vendor_name, nvidia.driver) == (
        "10de:2504",
        "GA106 [GeForce RTX 3060 Lite Hash Rate]",
        "NVIDIA Corporation",
        "nvidia",
    )
    assert vmware.ids == "15ad:0405"


def test_names_that_carry_their_id() -> None:
    sycl = "[opencl:gpu:2] Intel(R) OpenCL HD Graphics, Intel(R) Graphics [0x5693] 3.0 [22.40]\n"
    (arc,) = parse_dump(sycl).inventory.pci
    assert arc.ids == "8086:5693"
    plain = "01:00.0 3D controller: NVIDIA Corporation Device 20b2 (rev a1)\n"
    (a100,) = parse_dump(plain).inventory.pci
    assert (a100.ids, a100.revision) == ("10de:20b2", "a1")


XPU_SMI = """\
-----------------------------------------------------------------
xpu-smi is properly installed.
+-----------+--------------------------------------------------------------------------------------+
| Device ID | Device Information                                                                   |
+-----------+--------------------------------------------------------------------------------------+
| 0         | Device Name: Intel(R) Arc(TM) B580 Graphics                                          |
|           | PCI Device ID: 0xe20b                                                                |
|           | Vendor Name: Intel(R) Corporation                                                    |
|           | PCI BDF Address: 0000:03:00.0                                                        |
+-----------+--------------------------------------------------------------------------------------+
| 1         | Device Name: Intel(R) Arc(TM) A770 Graphics                                          |
|           | SOC UUID: 00000000-0000-0003-0000-000856a08086                                       |
|           | PCI BDF Address: 0000:04:00.0                                                        |
+-----------+--------------------------------------------------------------------------------------+
-----------------------------------------------------------------
04:00.0 VGA compatible controller: Intel Corporation Device 56a0 (rev 08)
"""


def test_xpu_smi_discovery_and_lspci_of_one_card() -> None:
    result = parse_dump(XPU_SMI)
    assert result.format == "xpu-smi+lspci-plain"
    b580, a770 = result.inventory.pci
    assert (b580.address, b580.ids) == ("0000:03:00.0", "8086:e20b")  # its PCI Device ID
    assert (a770.ids, a770.revision) == ("8086:56a0", "08")  # its SOC UUID; lspci's revision


def test_collect_env_gpu_lines() -> None:
    text = (
        "GPU models and configuration :\nGPU 0: NVIDIA L40S\nGPU 1: NVIDIA L40S\n\n"
        "Nvidia driver version        : 580.82.07\n"
    )
    result = parse_dump(text)
    assert result.format == "nvidia-smi-L"
    assert [d.device_name for d in result.inventory.pci] == ["NVIDIA L40S", "NVIDIA L40S"]


def test_lspci_path_addresses() -> None:
    text = (
        "00:01.1/00.0 PCI bridge [0604]: Advanced Micro Devices, Inc. [AMD] Device [1022:14ed]\n"
        "00:08.2/00.1 Signal processing controller [1180]: Advanced Micro Devices, Inc. [AMD] "
        "Device [1022:1502]\n"
    )
    found = parse_dump(text).inventory.pci
    assert [(d.address, d.ids) for d in found] == [
        ("00:01.1/00.0", "1022:14ed"),
        ("00:08.2/00.1", "1022:1502"),
    ]


def test_nothing_known_in_a_text_says_so_and_never_raises() -> None:
    result = parse_dump("hello\nworld\n")
    assert result.format is None and result.skipped
    assert "unknown format" in result.inventory.problems[0]
    for text in ("", "\x00\xff", "> " * 5000, "=\n" * 100, "&lt;" * 100):
        parse_dump(text)


def test_short_address_forms() -> None:
    assert short_address("00000000:3B:00.0") == "3b:00.0"
    assert short_address("0000:3b:00.0") == "3b:00.0"
    assert short_address("00:01.1/03:00.0") == "03:00.0"


def test_loose_devices_add_only_what_the_addressed_views_do_not_show() -> None:
    db = pciids.PciIds()
    lspci = [PciDevice(address=f"0{i}:00.0", vendor="8086", device="56a0") for i in (1, 2)]
    sycl = [PciDevice(vendor="8086", device="56a0", device_name="Intel(R) Arc(TM) A770")] * 3
    merged = merge_pci([lspci, sycl], db)
    assert len(merged) == 3  # sycl-ls sees one more than lspci showed: it counts
    merged = merge_pci([lspci, sycl[:2]], db)
    assert len(merged) == 2
