"""Which tool printed this dump? Pure: text in, a format name (or None) out.

Checks run from the most distinctive marker to the least; the first that holds wins.
"""

from __future__ import annotations

import re

from provisioner.discovery.dumps import lspci
from provisioner.discovery.dumps.clean import prepare, strip_ansi

FORMATS = (
    "agent",
    "nvidia-smi-q-x",
    "lshw-xml",
    "lshw-json",
    "nvidia-smi-q",
    "nvidia-smi-table",
    "nvidia-smi-L",
    "sycl-ls",
    "rocminfo",
    "clinfo",
    "xpu-smi",
    "inxi",
    "dmidecode",
    "proc-cpuinfo",
    "lshw-text",
    "lspci-vmmnn",
    "lspci-vvnn",
    "lspci-nnk",
    "lspci-nn",
    "lspci-plain",
)


def _count(pattern: str, lines: list[str], flags: int = 0) -> int:
    compiled = re.compile(pattern, flags)
    return sum(1 for line in lines if compiled.search(line))


def detect_format(text: str) -> str | None:
    lines, _ = prepare(strip_ansi(text))
    head = "\n".join(lines[:400])
    stripped = head.lstrip()
    if _count(r"^==> .+ <==$", lines) >= 2:
        return "agent"
    if "<nvidia_smi_log" in head:
        return "nvidia-smi-q-x"
    if re.search(r"<node\b[^>]*\bclass=", head):
        return "lshw-xml"
    if stripped[:1] in "[{" and stripped and re.search(r'"(class|businfo)"\s*:', head):
        return "lshw-json"
    if "NVSMI LOG" in head or ("Attached GPUs" in head and "Product Name" in head):
        return "nvidia-smi-q"
    if "NVIDIA-SMI" in head and _count(r"^\|", lines) >= 3:
        return "nvidia-smi-table"
    if _count(r"^GPU \d+: .+\(UUID: ", lines):
        return "nvidia-smi-L"
    if _count(r"^\[[a-z_]+:(gpu|cpu|acc|fpga)\b", lines):
        return "sycl-ls"
    if "HSA Agents" in head or "HSA System Attributes" in head:
        return "rocminfo"
    if "Number of platforms" in head or _count(r"^Platform #\d+:", lines):
        return "clinfo"
    if _count(r"^\|\s*Device ID\s*\|\s*Device Information", lines):
        return "xpu-smi"
    if _count(r"^(System|Machine|CPU|Graphics):(\s|$)", lines) >= 2 and (
        "Device-1:" in head or "bus-ID:" in head or "Kernel:" in head
    ):
        return "inxi"
    if _count(r"^Handle 0x[0-9A-Fa-f]+, DMI type \d+", lines):
        return "dmidecode"
    if _count(r"^processor\s*:\s*\d+", lines) and _count(
        r"^(vendor_id|model name|flags|Features|BogoMIPS)\s*:", lines
    ):
        return "proc-cpuinfo"
    if _count(r"^\s*\*-[\w:.-]+", lines) >= 2:
        return "lshw-text"
    if _count(r"^Slot:\s", lines) and _count(r"^Class:\s", lines):
        return "lspci-vmmnn"
    return _lspci_shape(lines)


def _lspci_shape(lines: list[str]) -> str | None:
    headers = [line for line in lines if lspci.is_header(line)]
    if not headers:
        return None
    with_ids = sum(1 for line in headers if re.search(r"\[[0-9a-fA-F]{4}:[0-9a-fA-F]{4}\]", line))
    sub = [line.strip() for line in lines if line[:1].isspace() and line.strip()]
    if with_ids * 2 < len(headers):
        return "lspci-plain"
    if any(line.startswith(lspci.VERBOSE_KEYS) for line in sub):
        return "lspci-vvnn"
    return "lspci-nnk" if sub else "lspci-nn"
